"""``pal-adapters serve DIR``: the arguments, and loading the model the server owns.

``pal_adapters.cli`` registers ``add_parser`` and imports this module only when the command
runs, so the other commands never import FastAPI or uvicorn. ``python -m pal_adapters.serve``
runs the same command on its own.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .settings import ServeSettings, read_token_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` command's arguments (defaults are ``ServeSettings``')."""
    d = ServeSettings()
    p.add_argument("model_dir", help="a folder saved by train or save_pretrained")
    p.add_argument("--model", help="the base encoder (default: the one the model records)")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port; 0 = any free one (default %(default)s)")
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens, help="padded tokens per forward")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="rows per forward")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="wait for more requests after the first")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests; more get 503")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="seconds before a 504")
    p.add_argument("--truncate", action="store_true", help="truncate over-long inputs instead of answering 413")
    p.add_argument("--no-batching", action="store_true", help="one request per forward (for comparisons)")
    p.add_argument("--admin-token-file", help="file whose first line is the admin token (enables PUT/DELETE /tasks)")
    p.add_argument("--task-root", help="folder of saved tasks that PUT /tasks/{name} may load")
    p.add_argument("--device", default="cpu", help="torch device for the model, e.g. cpu, cuda, cuda:1")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def settings_from(args: argparse.Namespace) -> ServeSettings:
    token = read_token_file(args.admin_token_file) if args.admin_token_file else None
    return ServeSettings(
        host=args.host, port=args.port, max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout,
        truncate=args.truncate, batching=not args.no_batching, admin_token=token,
        task_root=Path(args.task_root) if args.task_root else None)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load ``args.model_dir`` and serve it until SIGTERM (exit 0 after draining)."""
    try:
        from .app import create_app
        from .server import run
    except ModuleNotFoundError as err:
        if err.name not in ("fastapi", "starlette", "uvicorn", "prometheus_client"):
            raise
        raise ImportError(f"pal-adapters serve needs the serve extra ({err}): "
                          "pip install 'pal-adapters[serve]'") from err

    settings = settings_from(args)  # bad limits fail before the model loads
    model, tokenizer = load_model(args.model_dir, args.model, args.device)
    logging.getLogger("pal_adapters.serve").setLevel(args.log_level.upper())
    app = create_app(model, tokenizer, settings, info={"model_dir": str(Path(args.model_dir).resolve())})
    return run(app, settings, log_level=args.log_level)


def load_model(model_dir: str, base: str | None, device: str) -> tuple[Any, Any]:
    """The saved multi-task model on ``device``, in eval mode, and its tokenizer."""
    import torch

    from ..cli import load_saved

    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a torch device ({err})") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA device is available; use --device cpu")
    model, tokenizer = load_saved(model_dir, base)
    return model.to(target).eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    """``python -m pal_adapters.serve DIR ...``: the serve command alone."""
    parser = argparse.ArgumentParser(prog="pal-adapters serve", description="Serve every task of a saved model.")
    add_arguments(parser)
    return cmd_serve(parser.parse_args(argv))
