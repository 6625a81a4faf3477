"""The HTTP server of ``pal-adapters serve`` (an optional extra: ``pip install "pal-adapters[serve]"``).

    from pal_adapters.serve import ServeSettings, create_app
    app = create_app(model, tokenizer, ServeSettings(max_wait_ms=2))   # mount it in your own app

Modules: ``settings`` (limits), ``payload`` (request bodies -> rows), ``encoding`` (rows -> pieces
by each task's kind), ``collate`` (pieces -> one batch and back), ``jobs`` (the bounded queue),
``batcher`` (the worker that owns the model), ``app`` (routes), ``admin`` (token, task folders),
``metrics`` (Prometheus), ``info``, ``server`` (uvicorn, signals), ``cli`` (the command).
Importing this package loads nothing heavy; ``create_app`` imports FastAPI when first used.
"""

from __future__ import annotations

from typing import Any

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
EXTRA = ("fastapi", "starlette", "uvicorn", "prometheus_client")  # what the serve extra installs


def __getattr__(name: str) -> Any:
    if name == "create_app":
        try:
            from .app import create_app
        except ModuleNotFoundError as err:
            if err.name not in EXTRA:
                raise
            raise ImportError(f"the server needs the serve extra ({err}): pip install 'pal-adapters[serve]'") from err
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
