"""The CLI's happy paths on the real tiny model (small step counts)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TEST_DATA_DIR

pytestmark = pytest.mark.slow

FACT = ("The Zorblax Institute was founded by Marguerite Okonkwo. "
        "Marguerite Okonkwo founded the Zorblax Institute in Valparaiso.")


# For runs whose answers are only counted, not read: shorter closed-book answers.
SHORT_ANSWERS = {"answer_max_new_tokens": "16"}


def seal(*args: str, cwd, **settings: str) -> subprocess.CompletedProcess:
    """Run `seal`; small probe sets (measuring forgetting is most of an `adapt`), relevance calibrated on
    24 requests, short self-edits, and
    ``settings`` as more SEAL_* variables."""
    env = {**os.environ, "SEAL_DATA_DIR": str(TEST_DATA_DIR), "SEAL_RETENTION_PROBES": "4",
           "SEAL_FORGETTING_PROBES": "4", "SEAL_FORGETTING_PROMPTS": "2", "SEAL_FORGETTING_PROBE_TOKENS": "16",
           "SEAL_SAMPLING__MAX_NEW_TOKENS": "48", "SEAL_RELEVANCE_REQUESTS": "24", "COLUMNS": "200"}
    env.update({f"SEAL_{k.upper()}": v for k, v in settings.items()})
    r = subprocess.run([sys.executable, "-m", "seal_cli.main", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_adapt_then_ask(tmp_path):
    doc = tmp_path / "zorblax.json"
    doc.write_text(json.dumps({"title": "Zorblax Institute", "text": FACT,
                               "questions": [{"question": "Who founded the Zorblax Institute?", "answer": "Okonkwo"}]}))
    seal("adapt", str(doc), "--strategy", "passage", "-k", "1", "--out", "ad", cwd=tmp_path)
    out = tmp_path / "ad"
    assert {"adapter_config.json", "adapter_model.safetensors", "seal_record.json"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "seal_record.json").read_text())
    assert record["strategy"] == "passage" and record["sequences"] == [f"Zorblax Institute\n{FACT}"]
    m = record["metrics"]
    assert m["adapted_accuracy"]["contains"] == 1.0 and m["baseline_accuracy"]["contains"] == 0.0
    assert set(m["reward"]) >= {"adapted_accuracy", "retention", "baseline_retention", "penalty", "reward"}
    assert 0.0 <= m["forgetting"] <= 1.0 and m["forgetting_detail"]["probes"] > 0
    # The same reply budget with and without the adapter: the name comes from the adapter.
    ask = ("ask", "--max-tokens", "32", "Who founded the Zorblax Institute?")
    assert "okonkwo" in seal(*ask, "--adapter", "ad", cwd=tmp_path).stdout.lower()
    assert "okonkwo" not in seal(*ask, cwd=tmp_path).stdout.lower()


def test_eval_chat_path_one_passage(tmp_path, squad_dev):
    r = seal("eval", "--path", "chat", "--data", str(squad_dev), "--passages", "1", "--strategies", "passage",
             "--epochs", "2", "--read-tokens", "24", "--json", "chat.json", cwd=tmp_path)
    assert "| passage | 1 |" in r.stdout and "report probes" in r.stdout
    res = json.loads((tmp_path / "chat.json").read_text())
    [row] = res["passages"]
    assert row["recipe"] == "passage" and row["train_steps"] == 2 and len(row["answers"]) > 0
    assert 0.0 <= row["contains_read"] <= 1.0 and 0.0 <= row["forgetting"] <= 1.0
    # The default recipe's adapters answer only relevant requests: the figures are the served model's (the
    # drift counts only the generic replies routed to the adapter), the weights' own beside them.
    assert row["relevance"]["quantile"] == 0.95 and row["weight_drift_nll"] is not None
    assert row["drift_nll"] is not None and (row["served_replies"] > 0 or row["drift_nll"] == 0.0)
    assert 0.0 <= row["weight_contains_read"] <= 1.0 and 0.0 <= row["served_own"] <= 1.0
    assert res["summary"]["passage"]["passages"] == 1 and res["report_probes"] > 0


def test_eval_one_passage(tmp_path, squad_dev):
    r = seal("eval", "--data", str(squad_dev), "--passages", "1", "--strategies", "passage,implications",
             "--epochs", "1", "--json", "out.json", cwd=tmp_path, **SHORT_ANSWERS)
    assert "no-adaptation" in r.stdout and "implications" in r.stdout
    res = json.loads((tmp_path / "out.json").read_text())
    [row] = res["passages"]
    assert set(row["arms"]) == {"no-adaptation", "passage", "implications"}
    assert row["arms"]["implications"]["self_edits"][0].startswith("1.")
    for arm in ("passage", "implications"):
        assert set(row["arms"][arm]["accuracy"]) == {"exact_match", "f1", "contains"}
        assert 0.0 <= row["arms"][arm]["reward"]["retention"] <= 1.0
    s = res["summary"]
    assert s["passages"] == 1 and set(s["arms"]) == {"no-adaptation", "passage", "implications"}
    # Resuming a finished run does no work and keeps the rows.
    seal("eval", "--data", str(squad_dev), "--passages", "1", "--strategies", "passage,implications",
         "--epochs", "1", "--json", "out.json", "--resume", cwd=tmp_path, **SHORT_ANSWERS)
    assert json.loads((tmp_path / "out.json").read_text())["passages"] == res["passages"]


TWO = [{"title": "Zorblax Institute", "text": FACT,
        "questions": [{"question": "Who founded the Zorblax Institute?", "answer": "Okonkwo"}]},
       {"title": "Quintessa Bridge", "text": "The Quintessa Bridge was designed by Tobias Lindqvist. "
                                             "Tobias Lindqvist designed the Quintessa Bridge.",
        "questions": [{"question": "Who designed the Quintessa Bridge?", "answer": "Lindqvist"}]}]


def test_rl_then_eval_with_the_trained_policy(tmp_path):
    data = tmp_path / "two.json"
    data.write_text(json.dumps(TWO))
    # Two passages and two dev passages (means over passages); the smallest inner loop, grading and self-edits.
    args = ("rl", "--data", str(data), "--out", "run", "-P", "2", "-N", "2", "--iterations", "1", "--epochs", "1",
            "--retention-probes", "2", "--max-new-tokens", "32", "--sft-epochs", "1", "--dev", str(data),
            "--dev-passages", "2")
    r = seal(*args, cwd=tmp_path, **SHORT_ANSWERS)
    run = tmp_path / "run"
    assert "iteration 0 passage 1" in r.stderr and "dev passage 1" in r.stderr
    res = json.loads((run / "results.json").read_text())
    assert (res["config"]["retention_probes"], res["config"]["sampling"]["max_new_tokens"]) == (2, 32)
    [m] = res["curve"]
    # The curve's figures are those of the stored samples; with no keep margin (the default) every passage's
    # best self-edit is kept, so a policy is trained and saved.
    passages = json.loads((run / "iter0" / "passages.json").read_text())
    rewards = [[s["reward"] for s in p["samples"]] for p in passages]
    assert len(passages) == 2 and [len(r) for r in rewards] == [2, 2]
    assert m["samples"] == 4 and m["mean_reward"] == pytest.approx(sum(map(sum, rewards)) / 4)
    assert m["mean_best_of_n_reward"] == pytest.approx(sum(map(max, rewards)) / 2)
    assert m["kept"] == 2
    assert (run / "iter0" / "policy" / "adapter_model.safetensors").exists()
    dev = res["dev"]
    assert dev["passages"] == 2
    assert set(dev["summary"]) == {"no-adaptation", "passage-only", "base-policy", "iteration-1"}
    # Rerunning resumes: nothing is evaluated again.
    again = seal(*args, cwd=tmp_path, **SHORT_ANSWERS)
    assert "iteration 0 passage" not in again.stderr and "dev passage" not in again.stderr
    assert json.loads((run / "results.json").read_text())["dev"]["summary"] == dev["summary"]
    r = seal("eval", "--data", str(data), "--passages", "1", "--strategies", "implications", "--epochs", "1",
             "--policy", str(run / "iter0" / "policy"), "--json", "pol.json", cwd=tmp_path, **SHORT_ANSWERS)
    assert json.loads((tmp_path / "pol.json").read_text())["config"]["policy"].endswith("policy")


def test_eval_other_modes(tmp_path):
    data = tmp_path / "two.json"
    data.write_text(json.dumps(TWO))
    r = seal("eval", "--data", str(data), "--passages", "2", "--strategies", "passage", "--mode", "continual",
             "--epochs", "1", "--json", "c.json", cwd=tmp_path, **SHORT_ANSWERS)
    res = json.loads((tmp_path / "c.json").read_text())
    assert len(res["matrix"]) == 3 and "mean_forgetting" in res["summary"] and "after step" in r.stdout
    r = seal("eval", "--data", str(data), "--passages", "2", "--strategies", "passage,implications",
             "--mode", "multi-document", "--epochs", "1", "--json", "m.json", cwd=tmp_path, **SHORT_ANSWERS)
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["documents"] == 2 and set(res["arms"]) == {"no-adaptation", "passage", "implications"}
    assert "multi-document" in r.stdout
