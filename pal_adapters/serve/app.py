"""``create_app(model, tokenizer, settings)``: the FastAPI app of ``pal-adapters serve``.

Routes (TEI / KServe conventions): ``POST /predict``, ``POST /predict_all``, ``GET /tasks``,
``GET /health``, ``GET /ready``, ``GET /info``, ``GET /metrics``, and with an admin token
``PUT /tasks/{name}`` / ``DELETE /tasks/{name}``. Bodies are read and checked here (size, JSON,
fields: ``payload.py``), encoded off the event loop by each task's kind (``encoding.py``) and
answered by the worker that owns the model (``batcher.py``). Every error is JSON
``{"error", "status"[, "field"]}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..training.report import to_jsonable
from . import admin
from .batcher import Batcher
from .encoding import Piece, encode_request, token_limit
from .errors import ServeError
from .info import server_info, static_info, task_table
from .metrics import ServeMetrics
from .payload import check_fields, parse_body, read_inputs, read_task, read_truncate
from .predict_all import check_lengths, predict_every_task
from .settings import ServeSettings


@dataclass
class ServeState:
    """What the routes share: the batcher (which owns the model), limits, metrics, draining flag."""

    batcher: Batcher
    settings: ServeSettings
    metrics: ServeMetrics
    draining: bool = False

    def limit(self, task: str) -> int:
        entry = self.batcher.catalog[task]
        return token_limit(entry.config, self.batcher.model.input_limits.max_length)


def create_app(model: Any, tokenizer: Any, settings: ServeSettings | None = None,
               info: dict[str, Any] | None = None) -> FastAPI:
    """The server's app; its lifespan starts the model's worker and, on shutdown, drains it.

    ``info``: extra fields for ``GET /info`` (e.g. the model folder). ``app.state.serve`` is the
    ``ServeState``; set its ``draining`` to make ``/ready`` answer 503 (the CLI does on SIGTERM).
    """
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    state = ServeState(Batcher(model.eval(), tokenizer, settings, metrics), settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        yield
        state.draining = True
        await asyncio.to_thread(state.batcher.stop)

    app = FastAPI(title="pal-adapters", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state
    app.exception_handler(ServeError)(_serve_error)
    app.add_middleware(_metered(state))
    _add_prediction_routes(app, state, tokenizer)
    _add_status_routes(app, state, static_info(model) | (info or {}))
    _add_admin_routes(app, state)
    return app


async def _serve_error(request: Request, err: ServeError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _metered(state: ServeState):
    """ASGI middleware: every answered HTTP request counted and timed, by route and task."""
    def wrap(app):
        async def middleware(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            start, status = time.perf_counter(), [500]

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                path = getattr(scope.get("route"), "path", "unmatched")
                task = scope.get("state", {}).get("task", "-")
                state.metrics.observe_request(path, task, status[0], time.perf_counter() - start)
        return middleware
    return wrap


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ServeError(413, f"body: {declared} bytes is over the limit of {limit} bytes", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"body: over the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _add_prediction_routes(app: FastAPI, state: ServeState, tokenizer: Any) -> None:
    settings, batcher = state.settings, state.batcher

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = parse_body(await read_body(request, settings.max_body_bytes), settings.max_body_bytes)
        check_fields(body, ("task", "inputs", "truncate"))
        task = read_task(body, list(batcher.catalog))
        request.state.task = task
        rows = read_inputs(body, settings.max_inputs)
        truncate = read_truncate(body, settings.truncate)
        kind = batcher.catalog[task].kind
        pieces = await asyncio.to_thread(encode_request, task, kind, rows, tokenizer, state.limit(task), truncate)
        _check_budget(pieces, settings)
        predictions = await batcher.predict(task, pieces, len(rows), settings.request_timeout_s)
        return {"task": task, "predictions": to_jsonable(predictions)}

    @app.post("/predict_all")
    async def predict_all(request: Request) -> dict[str, Any]:
        body = parse_body(await read_body(request, settings.max_body_bytes), settings.max_body_bytes)
        check_fields(body, ("inputs", "truncate"))
        rows = read_inputs(body, settings.max_inputs)
        if not read_truncate(body, settings.truncate):
            limits = {t: state.limit(t) for t in batcher.catalog}
            await asyncio.to_thread(check_lengths, rows, batcher.catalog, tokenizer, limits)
        predictions, skipped = await batcher.call(
            lambda model: predict_every_task(model, tokenizer, rows),
            settings.request_timeout_s)
        return {"predictions": to_jsonable(predictions), "skipped": skipped}



def _add_status_routes(app: FastAPI, state: ServeState, info: dict[str, Any]) -> None:
    settings, batcher = state.settings, state.batcher

    @app.get("/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": task_table(batcher.catalog, batcher.model.adapter_config, state.limit)}

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = batcher.worker_alive
        return JSONResponse({"status": "ok" if alive else "model worker stopped"}, status_code=200 if alive else 503)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = batcher.alive and not state.draining
        status = "ready" if ok else ("draining" if state.draining else "not started")
        return JSONResponse({"status": status, "tasks": len(batcher.catalog)}, status_code=200 if ok else 503)

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return server_info(info, settings, list(batcher.catalog), len(batcher.queue))

    @app.get("/metrics")
    async def get_metrics() -> Response:
        state.metrics.queue_depth.set(len(batcher.queue))
        return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _add_admin_routes(app: FastAPI, state: ServeState) -> None:
    settings, batcher = state.settings, state.batcher

    @app.put("/tasks/{name}")
    async def load_task(name: str, request: Request) -> dict[str, Any]:
        admin.check_token(settings, request.headers.get("authorization"))
        folder = admin.task_folder(settings, name)
        return await batcher.call(lambda model: admin.load(model, folder, name), settings.request_timeout_s)

    @app.delete("/tasks/{name}")
    async def remove_task(name: str, request: Request) -> dict[str, Any]:
        admin.check_token(settings, request.headers.get("authorization"))
        admin.check_name(name)
        return await batcher.call(lambda model: admin.remove(model, name), settings.request_timeout_s)


def _check_budget(pieces: list[Piece], settings: ServeSettings) -> None:
    """413 for a request that could never fit one forward (many long inputs, a huge QA context)."""
    rows = sum(p.rows for p in pieces)
    tokens = rows * max(p.length for p in pieces)
    if rows > settings.max_batch_size or tokens > settings.max_batch_tokens:
        raise ServeError(413, f"inputs: this request needs {rows} rows and {tokens} padded tokens; one forward "
                         f"holds at most {settings.max_batch_size} rows and {settings.max_batch_tokens} tokens "
                         "(send fewer or shorter inputs)", field="inputs")
