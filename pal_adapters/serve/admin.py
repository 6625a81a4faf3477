"""Admin routes' rules: the bearer token, and which folder a task name may load from.

A client never names a path: ``PUT /tasks/{name}`` loads ``<task_root>/<name>`` (a folder written
by ``save_task``), where ``name`` is a plain name (letters, digits, ``_``, ``-``, ``.``; not
starting with a dot) and the folder, symlinks resolved, lies inside the task root.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any

from .errors import ServeError
from .settings import ServeSettings

TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_token(settings: ServeSettings, authorization: str | None) -> None:
    """403 when admin routes are off or the token is wrong; 401 when none was sent."""
    if settings.admin_token is None:
        raise ServeError(403, "admin routes are off; start the server with --admin-token-file FILE")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ServeError(401, "admin routes need the header 'Authorization: Bearer <token>'",
                         headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
        raise ServeError(403, "wrong admin token")


def check_name(name: str) -> str:
    if not TASK_NAME.fullmatch(name):
        raise ServeError(422, f"name: {name!r} is not a task name (letters, digits, '_', '-', '.'; at most 64, "
                         "not starting with '.')", field="name")
    return name


def task_folder(settings: ServeSettings, name: str) -> Path:
    """``<task_root>/<name>``, checked to be a folder inside the task root."""
    if settings.task_root is None:
        raise ServeError(403, "loading tasks is off; start the server with --task-root DIR")
    root = settings.task_root.resolve()
    folder = (root / check_name(name)).resolve()
    if folder.parent != root:
        raise ServeError(422, f"name: {name!r} resolves outside the task root", field="name")
    if not folder.is_dir():
        raise ServeError(404, f"name: no task folder {name!r} under the task root", field="name")
    return folder


def load(model: Any, folder: Path, name: str) -> dict[str, Any]:
    """On the worker: ``model.load_task(folder, name)``; a task that exists is a 409, a bad save a 422."""
    if name in model.tasks:
        raise ServeError(409, f"name: task {name!r} is already loaded; DELETE /tasks/{name} first", field="name")
    try:
        model.load_task(folder, name=name)
    except (ValueError, OSError, KeyError) as err:
        raise ServeError(422, f"task folder {name!r} cannot be loaded: {err}", field="name") from None
    return {"loaded": name, "tasks": model.task_names}


def remove(model: Any, name: str) -> dict[str, Any]:
    """On the worker: ``model.remove_task(name)``; 404 if it is not loaded."""
    if name not in model.tasks:
        raise ServeError(404, f"name: no task {name!r}; this server's tasks: {model.task_names}", field="name")
    model.remove_task(name)
    return {"removed": name, "tasks": model.task_names}
