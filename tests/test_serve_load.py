"""The server under load on 127.0.0.1: concurrent mixed-task clients get ``predict``'s answers
while tasks are loaded and removed; a full queue answers 503 with Retry-After and loses nothing;
a timeout is a 504; a failing batch fails only its requests; SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from test_serve_support import assert_close, build_model, expected, row_for, running, wait_until  # noqa: E402

TOKEN = "load-test-admin-token-0123456789"


async def fire(base: str, bodies: list[dict], concurrency: int, seconds: float = 60,
               on_answer=None) -> list[httpx.Response]:
    """POST /predict for each body, ``concurrency`` at a time; the whole run bounded in time.
    ``on_answer(response)`` is called as each answer arrives."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, body: dict) -> httpx.Response:
        async with gate:
            response = await client.post("/predict", json=body)
        if on_answer is not None:
            on_answer(response)
        return response

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        return await asyncio.wait_for(asyncio.gather(*(one(client, b) for b in bodies)), seconds)


def spy_batches(app, monkeypatch) -> list[set[str]]:
    """The set of tasks of every forward the batcher runs."""
    batcher, seen = app.state.serve.batcher, []
    real = batcher._forward

    def forward(batch):
        seen.append(set(batch.task_ids))
        return real(batch)

    monkeypatch.setattr(batcher, "_forward", forward)
    return seen


def gate_first_forward(app, monkeypatch, seconds: float = 10) -> threading.Event:
    """Hold the worker in its first forward until the returned event is set (at most ``seconds``)."""
    batcher, release = app.state.serve.batcher, threading.Event()
    real, calls = batcher._forward, []

    def forward(batch):
        calls.append(1)
        if len(calls) == 1:
            release.wait(seconds)
        return real(batch)

    monkeypatch.setattr(batcher, "_forward", forward)
    return release


def test_concurrent_mixed_task_clients_get_predicts_answers_from_shared_forwards(monkeypatch):
    model, tokenizer = build_model()
    rows = {t: [row_for(t, i) for i in range(8)] for t in model.task_names}
    want = {t: expected(model, tokenizer, t, rows[t]) for t in rows}
    rng = random.Random(0)
    picks = [(rng.choice(model.task_names), rng.randrange(8)) for _ in range(96)]
    with running(model, tokenizer, max_wait_ms=20) as (client, app):
        seen = spy_batches(app, monkeypatch)
        bodies = [{"task": t, "inputs": [rows[t][i]]} for t, i in picks]
        answers = asyncio.run(fire(str(client.base_url), bodies, concurrency=24))
    for (task, i), response in zip(picks, answers, strict=True):
        assert response.status_code == 200, response.text
        assert_close(response.json()["predictions"], [want[task][i]], f"{task}[{i}]")
    assert len(seen) < len(picks) and max(len(tasks) for tasks in seen) >= 3  # cross-task forwards happened


def test_tasks_loaded_and_removed_during_load_never_change_other_answers(tmp_path, monkeypatch):
    model, tokenizer = build_model(("cls", "reg"))
    donor, _ = build_model(("cls",), seed=7)
    donor.save_task(tmp_path / "extra", "cls")
    rows = [row_for("cls", i) for i in range(6)]
    want = {t: expected(model, tokenizer, t, rows) for t in ("cls", "reg")} | {"extra": expected(donor, tokenizer,
                                                                                                 "cls", rows)}
    picks = [(("cls", "reg", "extra")[k % 3], k % 6) for k in range(90)]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running(model, tokenizer, max_wait_ms=10, admin_token=TOKEN, task_root=tmp_path) as (client, _):
        def churn():
            for _ in range(6):
                assert client.put("/tasks/extra", headers=auth).status_code in (200, 409)
                time.sleep(0.02)
                assert client.delete("/tasks/extra", headers=auth).status_code in (200, 404)
        admin = threading.Thread(target=churn)
        admin.start()
        answers = asyncio.run(fire(str(client.base_url), [{"task": t, "inputs": [rows[i]]} for t, i in picks], 12))
        admin.join(30)
    statuses = {}
    for (task, i), response in zip(picks, answers, strict=True):
        statuses.setdefault(task, set()).add(response.status_code)
        if response.status_code == 200:
            assert_close(response.json()["predictions"], [want[task][i]], f"{task}[{i}]")
        else:
            assert task == "extra" and response.status_code == 404, response.text
    assert statuses["cls"] == statuses["reg"] == {200}


def test_a_burst_past_the_queue_gets_503_with_retry_after_and_loses_nothing(monkeypatch):
    model, tokenizer = build_model(("cls", "reg"))
    rows = [row_for("cls", i) for i in range(20)]
    want = expected(model, tokenizer, "cls", rows)
    with running(model, tokenizer, max_queue=4, max_batch_size=2, max_wait_ms=0) as (client, app):
        release = gate_first_forward(app, monkeypatch)  # the worker is held until the queue has overflowed:

        def release_on_503(response: httpx.Response) -> None:  # not by a timer, which a loaded machine outruns
            if response.status_code == 503:
                release.set()

        bodies = [{"task": "cls", "inputs": [r]} for r in rows]
        answers = asyncio.run(fire(str(client.base_url), bodies, 20, on_answer=release_on_503))
        assert client.get("/ready").status_code == 200
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 503} and codes.count(200) >= 5, codes  # 1 running + 4 queued at least
    for i, response in enumerate(answers):
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1" and "queue full" in response.json()["error"]
        else:
            assert_close(response.json()["predictions"], [want[i]], f"row {i}")


def test_a_request_past_its_timeout_gets_504_and_the_next_one_is_served(monkeypatch):
    model, tokenizer = build_model(("cls",))
    with running(model, tokenizer, request_timeout_s=0.3) as (client, app):
        release = gate_first_forward(app, monkeypatch)
        late = client.post("/predict", json={"task": "cls", "inputs": "a cat"})
        release.set()
        assert late.status_code == 504 and "0.3 s" in late.json()["error"]
        good = client.post("/predict", json={"task": "cls", "inputs": "a cat"})
        assert good.status_code == 200
        assert_close(good.json()["predictions"], expected(model, tokenizer, "cls", [{"text": "a cat"}]))


def test_a_failing_batch_fails_only_its_requests_and_the_next_batch_is_served(monkeypatch, caplog):
    model, tokenizer = build_model(("cls", "reg"))
    with running(model, tokenizer, max_wait_ms=200) as (client, app):
        batcher = app.state.serve.batcher
        real, calls = batcher._forward, []

        def forward(batch):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected failure")
            return real(batch)

        monkeypatch.setattr(batcher, "_forward", forward)
        bodies = [{"task": t, "inputs": "a good cat"} for t in ("cls", "reg", "cls")]
        failed = asyncio.run(fire(str(client.base_url), bodies, 3))
        assert [r.status_code for r in failed] == [500, 500, 500]
        assert "error id" in failed[0].json()["error"] and "injected failure" in caplog.text
        after = asyncio.run(fire(str(client.base_url), bodies, 3))
        assert [r.status_code for r in after] == [200, 200, 200]
        # a failure while post-processing one request fails that request only
        monkeypatch.setattr(model.heads["reg"].kind, "describe", lambda logits, context: 1 / 0)
        mixed = asyncio.run(fire(str(client.base_url), bodies, 3))
        assert [r.status_code for r in mixed] == [200, 500, 200]
        assert_close(mixed[0].json()["predictions"], expected(model, tokenizer, "cls", [{"text": "a good cat"}]))
        assert "pal_serve_batch_failures_total 1.0" in client.get("/metrics").text


# ---- a real process: pal-adapters serve, then SIGTERM ----------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from helpers import toy_backbone, toy_tokenizer
    from test_serve_support import ADAPTER, TASKS
    from transformers import AutoModel

    from pal_adapters import add_pal

    root = tmp_path_factory.mktemp("served")
    toy_backbone().save_pretrained(root / "base")
    toy_tokenizer().save_pretrained(root / "base")
    backbone = AutoModel.from_pretrained(root / "base")
    backbone.config.name_or_path = str(root / "base")
    add_pal(backbone, {t: TASKS[t] for t in ("cls", "ner")}, adapter=ADAPTER).save_pretrained(root / "model")
    return root / "model"


def start_server(model_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``pal-adapters serve DIR --port 0 ...`` (as ``python -m pal_adapters.cli``); returns it and its base
    URL (bounded wait). No --host: the default must be 127.0.0.1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "pal_adapters.cli", "serve", str(model_dir), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    if not lines or not lines[0].startswith("serving on http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"the server did not start: {lines} {proc.stderr.read()[-2000:]}")
    return proc, lines[0].split()[-1]


def test_sigterm_finishes_queued_requests_then_exits_0(saved_model):
    proc, base = start_server(saved_model, "--max-wait-ms", "1500")
    clients = [httpx.Client(base_url=base, timeout=30) for _ in range(6)]
    try:
        wait_until(lambda: clients[0].get("/ready").status_code == 200, 30, "not ready")
        results: list[int] = []

        def send(i: int) -> None:
            r = clients[i].post("/predict", json={"task": ("cls", "ner")[i % 2], "inputs": f"a good cat {i}"})
            results.append(r.status_code)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the requests wait in the batcher (max-wait 1.5 s) when the signal comes
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
        assert results == [200] * 6
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
