"""``ServeSettings``: every limit of the server, in one frozen, validated dataclass.

Each limit bounds something a client can make the server hold: rows and padded tokens per
forward (``max_batch_size``, ``max_batch_tokens``), requests waiting (``max_queue``), inputs per
request (``max_inputs``), bytes per body (``max_body_bytes``) and time per request
(``request_timeout_s``). Nothing grows without one of them saying where it stops.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of ``pal-adapters serve`` (and ``create_app``).

    Attributes:
        host: address to bind; 127.0.0.1 (this machine only) unless told otherwise.
        port: TCP port; 0 picks a free one (tests, benchmarks).
        max_batch_tokens: padded tokens (rows x longest row) one forward may hold.
        max_batch_size: rows (QA windows count one each) one forward may hold.
        max_wait_ms: how long the batcher waits for more requests after the first one arrives;
            0 runs whatever is waiting at once.
        max_queue: requests that may wait for the model; one more is refused with 503.
        max_inputs: inputs one request may hold (413 above).
        max_body_bytes: request body size (413 above).
        request_timeout_s: a request not answered by then gets 504.
        truncate: cut inputs over a task's ``max_length`` to it (as ``predict`` does) instead of answering 413;
            a request's ``"truncate"`` field overrides it.
        batching: off = one request per forward (for comparison in benchmarks/serve.py).
        admin_token: the token admin routes need (``Authorization: Bearer <token>``); None = no
            admin routes (they answer 403).
        task_root: folder whose sub-folders ``PUT /tasks/{name}`` may load; None = none.
        retry_after_s: the ``Retry-After`` a 503 carries.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_tokens: int = 16384
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 512
    max_inputs: int = 64
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 30.0
    truncate: bool = False
    batching: bool = True
    admin_token: str | None = None
    task_root: Path | None = None
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_size", "max_queue", "max_inputs", "max_body_bytes",
                     "retry_after_s"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("port", self.port, low=0, high=65535)
        for name in ("max_wait_ms", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if self.request_timeout_s == 0:
            raise ValueError("request_timeout_s=0 would time every request out; give a number > 0")
        _check_host(self.host)
        if self.admin_token is not None and len(self.admin_token.strip()) < 16:
            raise ValueError("admin_token must hold at least 16 non-blank characters (got "
                             f"{len(self.admin_token.strip())}); write a long random one to the token file")
        if self.task_root is not None:
            object.__setattr__(self, "task_root", Path(self.task_root))
            if not self.task_root.is_dir():
                raise ValueError(f"task_root={str(self.task_root)!r} is not a folder")

    def replace(self, **changes: Any) -> ServeSettings:
        return dataclasses.replace(self, **changes)

    def limits(self) -> dict[str, Any]:
        """What ``GET /info`` shows: every field but the admin token."""
        out = dataclasses.asdict(self)
        out["admin_token"] = "set" if self.admin_token else None
        out["task_root"] = str(self.task_root) if self.task_root else None
        return out


def read_token_file(path: str | Path) -> str:
    """The admin token: the file's first line, stripped (the file should be readable by its owner only)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--admin-token-file {str(file)!r} does not exist")
    lines = file.read_text(encoding="utf-8").splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(f"--admin-token-file {str(file)!r} is empty; write the token on its first line")
    return token


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r} must be an integer {bound}")


def _check_host(host: str) -> None:
    if host == "localhost":
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host={host!r} must be an IP address (127.0.0.1, ::1, 0.0.0.0) or 'localhost'") from None
