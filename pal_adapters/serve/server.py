"""Run the app under uvicorn: bind, say where, serve, and on SIGTERM drain and exit 0.

On SIGTERM (or Ctrl-C) uvicorn stops accepting, waits for the requests in flight (bounded by
the request timeout), then the app's lifespan serves what is still queued and ends the worker.
``/ready`` answers 503 from the signal on, so a load balancer stops sending.
"""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

import uvicorn

from .settings import ServeSettings


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, marking the app as draining when a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, state: Any):
        super().__init__(config)
        self.serve_state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.serve_state.draining = True
        super().handle_exit(sig, frame)


def bind(settings: ServeSettings) -> socket.socket:
    """A listening socket on ``settings.host:settings.port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {settings.host}:{settings.port}: {err.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(app: Any, settings: ServeSettings, log_level: str = "warning") -> int:
    """Serve ``app`` until SIGTERM/SIGINT; returns 0 after a clean drain.

    Prints ``serving on http://HOST:PORT`` (the real port when ``settings.port`` is 0) first.
    """
    sock = bind(settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving on http://{shown}:{port}", flush=True)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False,
                            timeout_graceful_shutdown=int(settings.request_timeout_s) + 5)
    server = _DrainingServer(config, app.state.serve)
    # uvicorn re-raises the signal it stopped on once it is done; with these handlers that is a no-op,
    # so a drained server exits 0 instead of dying of its own SIGTERM.
    previous = {sig: signal.signal(sig, _after_drain) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    print("stopped: every queued request answered", file=sys.stderr, flush=True)
    return 0


def _after_drain(sig: int, frame: Any) -> None:
    """Signal handler outside uvicorn's run: nothing left to stop."""
