"""Engine errors map to HTTP by their base class: an InputError that escapes a route is a 422."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api import errors
from seal_engine.errors import InputError, UnavailableError
from seal_engine.fewshot.grids import GridError


def _client() -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.get("/grid")
    def grid() -> None:
        raise GridError("row 2 is longer than row 1")

    @app.get("/input")
    def bad_input() -> None:
        raise InputError("no documents to adapt to")

    @app.get("/bug")
    def bug() -> None:
        raise UnavailableError("not an input error")

    return TestClient(app, raise_server_exceptions=False)


def test_any_input_error_is_a_422_in_the_openai_shape() -> None:
    client = _client()
    for path, message in (("/grid", "row 2 is longer than row 1"), ("/input", "no documents to adapt to")):
        r = client.get(path)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["message"] == message and err["code"] == "invalid_value" and err["type"] == "invalid_request_error"


def test_other_errors_stay_500_without_leaking_the_message() -> None:
    r = _client().get("/bug")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error" and "not an input error" not in r.text


class Body(BaseModel):
    name: str


def _body_client() -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.post("/echo")
    def echo(body: Body) -> dict:
        return {"name": body.name}

    return TestClient(app, raise_server_exceptions=False)


def test_malformed_json_names_line_and_column_not_an_offset() -> None:
    """error.param names a field; a body that is not JSON has none (it was a character offset)."""
    r = _body_client().post("/echo", headers={"content-type": "application/json"}, content=b'{\n  "name": "x",,\n}')
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["param"] is None
    assert body["error"]["code"] == "invalid_json"
    assert "line 2, column 15" in body["error"]["message"], body
    assert body["detail"] == [{"loc": ["body"], "msg": body["detail"][0]["msg"], "type": "json_invalid"}]


def test_undecodable_body_has_no_param() -> None:
    r = _body_client().post("/echo", headers={"content-type": "application/json"}, content=b'{"name": "\xff"}')
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] is None and r.json()["error"]["code"] == "invalid_json"


def test_field_errors_still_name_the_field() -> None:
    r = _body_client().post("/echo", json={"name": 3})
    assert r.status_code == 422 and r.json()["error"]["param"] == "name"
    assert r.json()["error"]["code"] == "invalid_value"
