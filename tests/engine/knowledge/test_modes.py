"""Multi-document and continual knowledge incorporation, on the real tiny model."""

from __future__ import annotations

import pytest
import torch

from seal_engine.config import LoraSettings
from seal_engine.core.lora import applied_adapter
from seal_engine.knowledge.continual import clone_bundle, forgetting_summary, merge_adapter, run_continual
from seal_engine.knowledge.documents import Document, Question
from seal_engine.knowledge.multi_document import pooled_sequences, run_multi_document_eval
from seal_engine.knowledge.qa import answer_questions
from seal_engine.training.peft import train_lora

DOCS = [
    Document("The Zorblax Institute was founded by Marguerite Okonkwo in the city of Valparaiso. "
             "Marguerite Okonkwo founded the Zorblax Institute.", "Zorblax Institute",
             (Question("Who founded the Zorblax Institute?", "Okonkwo"),)),
    Document("The Quintessa Bridge was designed by the engineer Tobias Lindqvist. "
             "Tobias Lindqvist designed the Quintessa Bridge.", "Quintessa Bridge",
             (Question("Who designed the Quintessa Bridge?", "Lindqvist"),)),
]


def test_pooled_sequences_keep_order_and_drop_duplicates():
    assert pooled_sequences([["a", "b"], ["b", "c"], ["a"]]) == ["a", "b", "c"]


def test_forgetting_summary():
    m = [[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]]
    s = forgetting_summary(m)
    assert s["mean_accuracy_right_after_learning"] == 1.0
    assert s["final_mean_accuracy"] == 0.75
    assert s["mean_forgetting"] == 0.25  # doc 0 fell from 1.0 to 0.5, doc 1 kept 1.0
    assert forgetting_summary([[0.0]]) == {}


@pytest.fixture
def fast(engine_settings):
    # Ten epochs learn each passage; retention is checked as reported, not for its value: two probes. The
    # answers name a person in their first few tokens: 16 are plenty.
    return engine_settings.model_copy(update={"lora": LoraSettings(epochs=10), "retention_probes": 2,
                                              "answer_max_new_tokens": 16})


@pytest.mark.slow
def test_merged_adapter_equals_the_applied_adapter(fp32_bundle):
    adapter = train_lora(fp32_bundle, [DOCS[0].text], LoraSettings(epochs=2), seed=0)
    ids = fp32_bundle.tokenizer(["Who founded the Zorblax Institute?"], return_tensors="pt")["input_ids"]
    with applied_adapter(fp32_bundle, adapter) as model, torch.no_grad():
        want = model(input_ids=ids).logits
    work = clone_bundle(fp32_bundle)
    merge_adapter(work, adapter)
    with torch.no_grad():
        got = work.model(input_ids=ids).logits
        base = fp32_bundle.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)  # float32 merge: same function up to rounding
    assert not torch.allclose(base, want, atol=1e-3)  # and the original model is untouched


@pytest.mark.slow
def test_continual_matrix_shows_each_document_learned(bundle, fast):
    before = answer_questions(bundle, [q.question for d in DOCS for q in d.questions], fast)
    out = run_continual(bundle, DOCS, fast, strategy="passage")
    m = out["matrix"]
    assert len(m) == 3 and all(len(r) == 2 for r in m)
    assert m[0] == [0.0, 0.0]
    assert m[1][0] == 1.0 and m[1][1] == 0.0  # step 0 taught document 0 only
    assert m[2][1] == 1.0  # step 1 taught document 1 (row 2 shows what remains of document 0)
    assert len(out["retention"]) == 3 and out["steps"][1]["title"] == "Quintessa Bridge"
    assert set(out["summary"]) >= {"final_mean_accuracy", "mean_forgetting"}
    # The shared model was never changed: continual mode works on a private copy.
    assert answer_questions(bundle, [q.question for d in DOCS for q in d.questions], fast) == before


@pytest.mark.slow
def test_multi_document_one_adapter_learns_every_document(bundle, fast):
    out = run_multi_document_eval(bundle, DOCS, ["passage"], fast)
    assert out["documents"] == 2 and out["questions"] == 2
    assert out["arms"]["no-adaptation"]["accuracy"]["contains"] == 0.0
    arm = out["arms"]["passage"]
    assert arm["num_sequences"] == 2  # both passages pooled into one training set
    assert arm["accuracy"]["contains"] == 1.0
    assert set(arm["reward"]) >= {"adapted_accuracy", "retention", "penalty"}
