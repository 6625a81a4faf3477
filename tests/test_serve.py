"""The server's routes on a real uvicorn on 127.0.0.1: answers equal ``predict``'s, bad input gets
a 4xx naming the field, admin routes need the token, tasks load from the task root only."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from test_serve_support import (  # noqa: E402
    TASKS,
    assert_close,
    build_model,
    expected,
    row_for,
    running,
    sentence,
)

from pal_adapters.serve import ServeSettings  # noqa: E402

TOKEN = "s3cret-token-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def served():
    model, tokenizer = build_model()
    with running(model, tokenizer, max_inputs=8, max_body_bytes=4096) as (client, app):
        yield client, app, model, tokenizer


def test_health_ready_info_tasks_and_metrics_answer(served):
    client, _, model, _ = served
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "tasks": 4}
    info = client.get("/info").json()
    assert info["tasks"] == model.task_names and info["limits"]["host"] == "127.0.0.1"
    assert info["base_model"]["model_type"] == "bert" and info["limits"]["admin_token"] is None
    tasks = {t["name"]: t for t in client.get("/tasks").json()["tasks"]}
    assert tasks["cls"]["labels"] == ["neg", "pos"] and tasks["ner"]["type"] == "token_classification"
    assert tasks["qa"]["adapter"]["kind"] == "pal" and tasks["reg"]["max_length"] == 128
    client.post("/predict", json={"task": "cls", "inputs": "a good movie"})
    metrics = client.get("/metrics").text
    assert 'pal_serve_requests_total{route="/predict",status="200",task="cls"}' in metrics
    assert "pal_serve_tasks_loaded 4.0" in metrics and "pal_serve_batch_tokens_bucket" in metrics


@pytest.mark.parametrize("task", sorted(TASKS))
def test_predict_equals_predict_rows_for_every_kind(served, task):
    client, _, model, tokenizer = served
    rows = [row_for(task, i) for i in range(5)]
    response = client.post("/predict", json={"task": task, "inputs": rows})
    assert response.status_code == 200, response.text
    assert response.json()["task"] == task
    assert_close(response.json()["predictions"], expected(model, tokenizer, task, rows))


def test_a_string_input_is_a_text_and_answers_a_list(served):
    client, _, model, tokenizer = served
    got = client.post("/predict", json={"task": "ner", "inputs": "the movie was very good"}).json()
    assert_close(got["predictions"], expected(model, tokenizer, "ner", [{"text": "the movie was very good"}]))


def test_predict_all_equals_each_task_and_lists_skipped_tasks(served):
    client, _, model, tokenizer = served
    rows = [{"text": sentence(1)}, {"question": "who sat", "context": "the cat sat"}]
    got = client.post("/predict_all", json={"inputs": rows}).json()
    assert set(got["predictions"][0]) == {"cls", "reg", "ner"} and "qa" in got["skipped"][0]
    assert set(got["predictions"][1]) == {"qa"} and set(got["skipped"][1]) == {"cls", "reg", "ner"}
    for i, row in enumerate(rows):
        for task, prediction in got["predictions"][i].items():
            assert_close(prediction, expected(model, tokenizer, task, [row])[0], f"{task}")


BAD_INPUTS = [
    (b'{"task": "cls", "inputs": ', 400, "body"),
    (b'["cls"]', 422, "body"),
    (b'{"inputs": "a"}', 422, "task"),
    (b'{"task": 3, "inputs": "a"}', 422, "task"),
    (b'{"task": "nope", "inputs": "a"}', 404, "task"),
    (b'{"task": "cls"}', 422, "inputs"),
    (b'{"task": "cls", "inputs": []}', 422, "inputs"),
    (b'{"task": "cls", "inputs": 7}', 422, "inputs"),
    (b'{"task": "cls", "inputs": ""}', 422, "inputs.text"),
    (b'{"task": "cls", "inputs": ["a cat", "   "]}', 422, "inputs[1].text"),
    (b'{"task": "cls", "inputs": [{"text": "a", "colour": "red"}]}', 422, "inputs[0].colour"),
    (b'{"task": "cls", "inputs": [{"text": ["a"]}]}', 422, "inputs[0].text"),
    (b'{"task": "cls", "inputs": [{"text_b": "a"}]}', 422, "inputs[0].text_b"),
    (b'{"task": "cls", "inputs": "a", "truncate": "yes"}', 422, "truncate"),
    (b'{"task": "cls", "inputs": "a", "extra": 1}', 422, "extra"),
    (b'{"task": "qa", "inputs": ["a cat"]}', 422, "inputs[0]"),
    (b'{"task": "ner", "inputs": [{"text": "a", "text_b": "b"}]}', 422, "inputs[0]"),
    (b'{"task": "cls", "inputs": ["a"' + b', "a"' * 8 + b"]}", 413, "inputs"),
    (json.dumps({"task": "cls", "inputs": "cat " * 2000}).encode(), 413, "body"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_INPUTS)
def test_bad_input_gets_a_4xx_naming_the_field(served, body, status, field):
    client = served[0]
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and error["error"].startswith(field) and error["status"] == status
    assert client.post("/predict", json={"task": "cls", "inputs": "a cat"}).status_code == 200  # still serving


def test_unknown_task_lists_the_tasks(served):
    error = served[0].post("/predict", json={"task": "sst2", "inputs": "a"}).json()["error"]
    assert "'sst2'" in error and all(repr(t) in error for t in ("cls", "reg", "ner", "qa"))


def test_an_input_over_the_length_limit_is_413_unless_truncation_is_asked(served):
    client, _, model, tokenizer = served
    long_text = sentence(3, 200)  # ~200 words of the toy vocabulary, one token each
    over = client.post("/predict", json={"task": "cls", "inputs": ["a cat", long_text]})
    assert over.status_code == 413 and over.json()["field"] == "inputs[1]" and "128" in over.json()["error"]
    assert client.post("/predict_all", json={"inputs": [long_text]}).status_code == 413
    cut = client.post("/predict", json={"task": "cls", "inputs": [long_text], "truncate": True})
    assert cut.status_code == 200
    assert_close(cut.json()["predictions"], expected(model, tokenizer, "cls", [{"text": long_text}]))


def test_a_long_qa_context_becomes_windows_of_one_request():
    model, tokenizer = build_model(("qa", "cls"), max_length=32)  # the task's own token limit
    row = {"question": "who sat", "context": sentence(5, 120) + " the cat sat on the dog"}
    with running(model, tokenizer) as (client, app):
        got = client.post("/predict", json={"task": "qa", "inputs": [row]})
        assert got.status_code == 200, got.text
        assert_close(got.json()["predictions"], expected(model, tokenizer, "qa", [row]))
        rows = app.state.serve.metrics.batch_rows.collect()[0].samples
        assert next(s.value for s in rows if s.name.endswith("_sum")) > 4  # one request, several windows


# ---- admin -----------------------------------------------------------------------------------------
def test_admin_routes_are_off_without_a_token(served):
    client = served[0]
    assert client.put("/tasks/cls2").status_code == 403
    assert client.delete("/tasks/cls", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
    assert "cls" in [t["name"] for t in client.get("/tasks").json()["tasks"]]


@pytest.fixture
def task_root(tmp_path):
    donor, _ = build_model(("cls",), seed=5)
    donor.save_task(tmp_path / "extra", "cls")
    (tmp_path / "not_a_task").mkdir()
    return tmp_path


def test_admin_loads_and_removes_a_task_from_the_task_root_only(task_root):
    model, tokenizer = build_model(("cls", "reg"))
    donor, _ = build_model(("cls",), seed=5)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running(model, tokenizer, admin_token=TOKEN, task_root=task_root) as (client, _):
        assert client.put("/tasks/extra").status_code == 401
        assert client.put("/tasks/extra", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 403
        loaded = client.put("/tasks/extra", headers=auth)
        assert loaded.status_code == 200 and loaded.json()["tasks"] == ["cls", "reg", "extra"]
        rows = [row_for("cls", i) for i in range(4)]
        got = client.post("/predict", json={"task": "extra", "inputs": rows}).json()["predictions"]
        assert_close(got, expected(donor, tokenizer, "cls", rows))  # the donor's weights, not a fresh head
        assert client.put("/tasks/extra", headers=auth).status_code == 409
        for name, status in (("%2E%2E", 422), (".hidden", 422), ("a%2Fb", 404), ("missing", 404), ("not_a_task", 422)):
            assert client.put(f"/tasks/{name}", headers=auth).status_code == status, name
        assert client.delete("/tasks/extra", headers=auth).json()["tasks"] == ["cls", "reg"]
        assert client.post("/predict", json={"task": "extra", "inputs": "a"}).status_code == 404
        assert client.delete("/tasks/extra", headers=auth).status_code == 404


def test_settings_refuse_bad_values_naming_them(tmp_path):
    assert ServeSettings().host == "127.0.0.1"
    for bad, name in (({"max_batch_size": 0}, "max_batch_size"), ({"max_wait_ms": -1}, "max_wait_ms"),
                      ({"port": 70000}, "port"), ({"host": "my host"}, "host"),
                      ({"admin_token": "short"}, "admin_token"),
                      ({"task_root": tmp_path / "nope"}, "task_root"), ({"max_batch_tokens": 0}, "max_batch_tokens")):
        with pytest.raises(ValueError, match=name):
            ServeSettings(**bad)
