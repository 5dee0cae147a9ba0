import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from seal_engine.config import JudgeSettings
from seal_engine.core.grading import (
    JudgeError,
    LLMJudge,
    contains,
    exact_match,
    normalize_answer,
    parse_verdict,
    token_f1,
)
from seal_engine.knowledge.documents import Question
from seal_engine.knowledge.qa import grade_answers


def test_normalization_follows_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a pear") == "apple pear"


def test_exact_match():
    assert exact_match("the Paris.", "Paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_known_values():
    assert token_f1("Paris", "Paris") == 1.0
    assert token_f1("London", "Paris") == 0.0
    # pred: {in, paris}, gold: {paris}: precision 1/2, recall 1 -> F1 2/3
    assert token_f1("in Paris", "Paris") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0


def test_contains_respects_word_boundaries():
    assert contains("The capital of France is Paris.", "paris") == 1.0
    assert contains("It was 1887 exactly", "1887") == 1.0
    assert contains("It was 18870", "1887") == 0.0
    assert contains("anything", "the") == 0.0  # gold normalises to empty


def test_parse_verdict():
    assert parse_verdict("Yes.") is True
    assert parse_verdict("no") is False
    with pytest.raises(JudgeError):
        parse_verdict("maybe")
    with pytest.raises(JudgeError):
        parse_verdict("yes and no")


class _Judge(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible chat endpoint: answers 'yes' iff the gold appears in the student answer."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.fail:  # type: ignore[attr-defined]
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        prompt = body["messages"][0]["content"]
        gold = prompt.split("Gold answer: ")[1].split("\n")[0]
        student = prompt.split("Student answer: ")[1].split("\n")[0]
        verdict = "yes" if gold.lower() in student.lower() else "no"
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": verdict}}],
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    server.fail = False  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _judge(server) -> LLMJudge:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return LLMJudge(JudgeSettings(base_url=url, api_key="k", model="judge", timeout_s=5), max_retries=0)


def test_llm_judge_over_http(judge_server):
    qs = [Question("Capital of France?", "Paris"), Question("Capital of Italy?", "Rome")]
    result = grade_answers(qs, ["It is Paris", "It is Milan"], _judge(judge_server))
    assert [g["judge"] for g in result.grades] == [1.0, 0.0]
    assert result.accuracy["judge"] == 0.5
    assert result.judge_error is None


def test_judge_failure_is_an_error_not_a_wrong_answer(judge_server):
    judge_server.fail = True
    result = grade_answers([Question("Capital of France?", "Paris")], ["Paris"], _judge(judge_server))
    assert result.judge_error and "judge request failed" in result.judge_error
    assert "judge" not in result.accuracy  # not silently counted as 0
    assert result.accuracy["contains"] == 1.0


def test_judge_needs_configuration():
    with pytest.raises(JudgeError):
        LLMJudge(JudgeSettings())
