"""Helpers of the server tests (no tests here): a tiny four-kind model, an in-process server on
127.0.0.1 with an ephemeral port, the expected answers from ``predict_rows``, bounded waits."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from helpers import WORDS, randomize_adapters, toy_backbone, toy_tokenizer

from pal_adapters import TaskConfig, add_pal
from pal_adapters.predict import predict_rows
from pal_adapters.serve import ServeSettings, create_app
from pal_adapters.serve.server import bind
from pal_adapters.training.report import to_jsonable

TAGS = ("O", "B-ADJ", "I-ADJ")
TASKS = {"cls": TaskConfig(num_labels=2, labels=("neg", "pos"), dropout=0.0),
         "reg": TaskConfig(type="regression", dropout=0.0),
         "ner": TaskConfig(type="token_classification", num_labels=3, labels=TAGS, dropout=0.0),
         "qa": TaskConfig(type="extractive_qa", dropout=0.0)}
ADAPTER = {"kind": "pal", "hidden_size": 8, "num_heads": 2, "dropout": 0.0}


def build_model(tasks: tuple[str, ...] = ("cls", "reg", "ner", "qa"), seed: int = 0, **task_fields: Any):
    """A toy-vocabulary BERT with non-identity adapters for each task (``task_fields`` replace
    TaskConfig fields of every task); eval mode."""
    configs = {t: dataclasses.replace(TASKS[t], **task_fields) for t in tasks}
    model = add_pal(toy_backbone(), configs, adapter=ADAPTER).eval()
    randomize_adapters(model, seed=seed + 2)
    return model, toy_tokenizer()


def sentence(i: int, words: int | None = None) -> str:
    n = words if words is not None else 2 + i % 9
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def row_for(task: str, i: int) -> dict[str, str]:
    if task == "qa":
        return {"question": sentence(i, 2), "context": sentence(i + 1, 6 + i % 7) + " the cat sat"}
    if task == "reg" and i % 2:
        return {"text": sentence(i), "text_b": sentence(i + 3)}
    return {"text": sentence(i)}


def expected(model: Any, tokenizer: Any, task: str, rows: list[dict[str, str]]) -> list:
    """What ``predict`` answers for each of ``rows`` and ``task`` (each row on its own, since
    ``predict`` batches only rows of the same form; the same rounding the server applies)."""
    out = [predict_rows(model, tokenizer, [row], [task])[0][0][task] for row in rows]
    return to_jsonable(out)


def assert_close(got: Any, want: Any, where: str = "") -> None:
    """Equal structure; floats within 1e-5 (relative for large scores)."""
    if isinstance(want, float):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5), (where, got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (where, got, want)
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


@contextmanager
def running(model: Any, tokenizer: Any, **settings: Any) -> Iterator[tuple[httpx.Client, Any]]:
    """The real app under uvicorn on 127.0.0.1:<ephemeral>, in a thread; stopped on exit (bounded)."""
    config = ServeSettings(**{"port": 0, "max_wait_ms": 5.0, **settings})
    app = create_app(model, tokenizer, config)
    sock = bind(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "the server did not start")
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=base, timeout=20) as client:
            yield client, app
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the server thread did not stop"


def wait_until(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.02)
