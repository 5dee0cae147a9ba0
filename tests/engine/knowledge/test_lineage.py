"""Versions of an adapter on the real tiny model: a child continues its parent's weights, rehearses its
sequences, is graded on its ancestors' questions and rejected when it lost one of them."""

from __future__ import annotations

import pytest

from seal_engine.config import LoraSettings
from seal_engine.core.lora import AdapterError
from seal_engine.knowledge.documents import Document, Question
from seal_engine.knowledge.lineage import (Ancestor, AncestorForgettingExceeded, AncestorScore, ChainCheck, Parent,
                                           enforce_chain)

ZORBLAX = Document("The Zorblax Institute is a research centre in Valparaiso. It was founded in 1887 by the chemist "
                   "Marguerite Okonkwo.", "Zorblax Institute")
ZORBLAX_Q = Question("Who founded the Zorblax Institute?", "Okonkwo")
QUILLON = Document("The Quillon Observatory stands on Mount Tervane. Its first director was the astronomer "
                   "Ingrid Haldorsen.", "Quillon Observatory")
QUILLON_Q = Question("Who was the first director of the Quillon Observatory?", "Haldorsen")


def test_what_a_version_lost_is_a_share_of_what_it_had_learned():
    assert AncestorScore("a", accuracy=0.25, accuracy_at_step=1.0).lost == 0.75
    assert AncestorScore("a", accuracy=1.0, accuracy_at_step=0.5).lost == 0.0  # gained
    assert AncestorScore("a", accuracy=0.0, accuracy_at_step=0.0).lost == 0.0  # had learned nothing
    assert AncestorScore("a", accuracy=0.0, accuracy_at_step=None).lost == 0.0  # never graded
    # Pooled over the ancestors' questions: a had 4 of 4 right and keeps 2, b had 2 of 8 and keeps them.
    check = ChainCheck([AncestorScore("a", 0.5, 1.0, questions=4), AncestorScore("b", 0.25, 0.25, questions=8)])
    assert check.lost == pytest.approx(2 / 6) and check.worst.key == "a"
    enforce_chain(check, None)
    enforce_chain(check, 0.34)
    with pytest.raises(AncestorForgettingExceeded) as e:
        enforce_chain(check, 0.3)
    assert e.value.code == "ancestor_forgetting_exceeded" and "version a" in str(e.value)
    assert e.value.details()["chain"]["lost"] == pytest.approx(2 / 6)
    assert e.value.details()["chain"]["max_lost"] == 0.5
    enforce_chain(ChainCheck([], own=1.0), 0.0)  # a root: nothing to lose


@pytest.fixture(scope="module")
def root(bundle, engine_settings):
    from seal_engine.knowledge.adapt import adapt

    return adapt(bundle, [ZORBLAX], engine_settings, strategy="passage", lora=LoraSettings(), questions=[ZORBLAX_Q],
                 evaluate_baseline=False, measure_retention=False)


@pytest.mark.slow
def test_a_child_continues_its_parent_and_keeps_its_documents(bundle, engine_settings, root):
    from seal_engine.knowledge.adapt import adapt
    from seal_engine.knowledge.qa import chat_answers

    assert root.chain is not None and root.chain.own == 1.0 and root.chain.scores == []
    parent = Parent(root.adapter, root.sequences, [Ancestor("root", [ZORBLAX_Q], 1.0)])
    child = adapt(bundle, [QUILLON], engine_settings, strategy="passage", lora=LoraSettings(), questions=[QUILLON_Q],
                  evaluate_baseline=False, measure_retention=False, parent=parent, max_forgetting=0.5)
    # The parent's passage is trained again, first, and the run started from the parent's weights:
    # its first loss (both passages) is far below a fresh adapter's on the same data.
    assert child.sequences == [*root.sequences, *[s for s in child.sequences if s not in root.sequences]]
    assert len(child.sequences) == 2 and QUILLON.text in child.sequences[1]
    fresh = adapt(bundle, [ZORBLAX, QUILLON], engine_settings, strategy="passage", lora=LoraSettings(epochs=1),
                  evaluate_baseline=False, measure_retention=False)
    assert child.adapter.losses[0] < 0.8 * fresh.adapter.losses[0], (child.adapter.losses[0], fresh.adapter.losses[0])
    assert child.chain is not None and [s.key for s in child.chain.scores] == ["root"]
    assert child.metrics()["chain"]["ancestors"][0]["accuracy"] == 1.0 and child.chain.own == 1.0
    replies = chat_answers(bundle, [ZORBLAX_Q.question, QUILLON_Q.question], [child.adapter] * 2, max_tokens=64)
    assert "okonkwo" in replies[0].lower() and "haldorsen" in replies[1].lower(), replies


@pytest.mark.slow
def test_a_child_that_lost_its_ancestors_document_is_rejected(bundle, engine_settings, root):
    from seal_engine.knowledge.adapt import adapt

    parent = Parent(root.adapter, root.sequences, [Ancestor("root", [ZORBLAX_Q], 1.0)], rehearse=False)
    # No rehearsal and a harsh update on another document: the first fact is overwritten.
    with pytest.raises(AncestorForgettingExceeded) as e:
        adapt(bundle, [QUILLON], engine_settings, strategy="passage", parent=parent, max_forgetting=0.5,
              lora=LoraSettings(epochs=12, learning_rate=1e-2), evaluate_baseline=False, measure_retention=False)
    assert e.value.details()["chain"]["ancestors"][0]["accuracy"] == 0.0


def test_a_child_must_have_its_parents_lora_shape(bundle, engine_settings, root):
    from seal_engine.knowledge.adapt import adapt

    parent = Parent(root.adapter, root.sequences)
    with pytest.raises(AdapterError, match="rank"):
        adapt(bundle, [QUILLON], engine_settings, strategy="passage", parent=parent, lora=LoraSettings(rank=8, alpha=16))
    with pytest.raises(AdapterError, match="targets"):
        adapt(bundle, [QUILLON], engine_settings, strategy="passage", parent=parent,
              lora=LoraSettings(target_modules=["all-linear"]))
    with pytest.raises(AdapterError, match="scales"):
        adapt(bundle, [QUILLON], engine_settings, strategy="passage", parent=parent, lora=LoraSettings(alpha=8))


def test_a_step_toward_the_parent_runs_from_the_parent_to_the_child(bundle):
    import torch

    from tests.support.adapters import random_adapter

    parent, child = random_adapter(bundle, 4, seed=1), random_adapter(bundle, 4, seed=2)
    for factor, expected in ((0.0, parent), (1.0, child)):
        point = child.toward(parent, factor)
        assert all(torch.equal(point.state[k], expected.state[k]) for k in child.state)
    half = child.toward(parent, 0.5)
    k = next(iter(child.state))
    assert torch.allclose(half.state[k], (parent.state[k] + child.state[k]) / 2)
