"""The LLM judge inside adaptation jobs (workers/adaptation/run.py, SEAL_JUDGE__*): a job graded by the judge
really asks it and records its verdicts; a judge that fails is reported, never counted as a wrong answer,
and fails the job (with its own error code) only when it is the reward's grader. Real tiny model, small steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import TEST_DATA_DIR
from tests.support.judge import JudgeServer
from tests.support.service import api_client, bearer, new_key, service_settings
from workers.adaptation.run import run_adaptation

pytestmark = pytest.mark.slow

FACT = "The Zorblax Institute was founded by Marguerite Okonkwo in 1987 to study glacier acoustics."
QUESTIONS = [{"question": "Who founded the Zorblax Institute?", "answer": "Marguerite Okonkwo"},
             {"question": "What does the Zorblax Institute study?", "answer": "glacier acoustics"}]


@pytest.fixture
def judged(tmp_path, bundle, request):
    """A service whose jobs grade with a judge server (``request.param``: the reward's grader)."""
    with JudgeServer() as judge:
        settings = service_settings(tmp_path, TEST_DATA_DIR, judge=judge.settings(), forgetting_probes=4,
                                    forgetting_prompts=2, recipe={"relevance": False},  # the grading, not routing
                                    reward_grader=getattr(request, "param", "contains"))
        with api_client(settings) as client:
            h = bearer(new_key(settings, "acme"))

            def job() -> dict:
                r = client.post("/v1/adaptations", headers=h, json={
                    "documents": [{"title": "Zorblax Institute", "text": FACT}], "strategy": "passage",
                    "lora": {"epochs": 2}, "eval_questions": QUESTIONS, "max_forgetting": 1})
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                run_adaptation(settings, job_id, bundle_fn=lambda _s: bundle)
                return client.get(f"/v1/adaptations/{job_id}", headers=h).json()

            yield SimpleNamespace(judge=judge, job=job)


def test_a_job_grades_its_questions_with_the_judge(judged):
    # The judge accepts every answer, which the offline graders do not: a "judge" grade of 1 is its verdict.
    out = judged.job()
    assert out["status"] == "succeeded", out["error"]
    m = out["metrics"]
    assert m["judge_error"] is None
    assert m["baseline_accuracy"]["judge"] == m["adapted_accuracy"]["judge"] == 1.0
    assert m["baseline_accuracy"]["exact_match"] < 1.0  # so the 1.0 above is the judge's, not a copy
    # Each question was put to it once for the base model and once for the adapter, with its gold answer.
    assert len(judged.judge.prompts) == 2 * len(QUESTIONS)
    for q in QUESTIONS:
        asked = [p for p in judged.judge.prompts if f"Question: {q['question']}\nGold answer: {q['answer']}\n" in p]
        assert len(asked) == 2, judged.judge.prompts


def test_a_failing_judge_is_reported_not_counted_as_wrong(judged):
    judged.judge.fail = True
    out = judged.job()
    # An extra grade that could not be had: the adapter is registered; the judge's failure is in the metrics.
    assert out["status"] == "succeeded" and out["adapter_id"], out["error"]
    m = out["metrics"]
    assert "judge request failed" in m["judge_error"] and "500" in m["judge_error"]
    assert "judge" not in m["adapted_accuracy"] and "judge" not in m["baseline_accuracy"]
    assert m["reward"]["adapted_accuracy"] == m["adapted_accuracy"]["contains"]
    assert judged.judge.prompts  # it was asked


@pytest.mark.parametrize("judged", ["judge"], indirect=True)
def test_a_failing_judge_fails_a_job_whose_reward_it_grades(judged):
    judged.judge.fail = True
    out = judged.job()
    assert out["status"] == "failed" and out["adapter_id"] is None
    assert out["error"]["code"] == "judge_unavailable", out["error"]
    assert "judge" in out["error"]["message"] and "500" in out["error"]["message"]
