"""``ServeError``: an HTTP status, a message that names the bad field, and optional headers."""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """A request the server refuses (4xx) or could not serve (5xx).

    ``field`` is where in the body the problem is (``"inputs[2].text"``), or None; it is part of
    the JSON error body so a client can point at it without parsing the message.
    """

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "status": self.status}
        if self.field is not None:
            out["field"] = self.field
        return out


def bad_input(field: str, message: str, status: int = 422) -> ServeError:
    """A 4xx whose message starts with the field it is about."""
    return ServeError(status, f"{field}: {message}", field=field)
