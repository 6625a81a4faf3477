"""Atomic writes of folders and files, and the clean-up of what a killed write leaves behind.

A folder ``target`` is written as ``.<target>.tmp-<pid>-<random>`` next to it, then swapped in with
two renames: ``target -> .<target>.old-<pid>`` and ``tmp -> target``; the old copy is then deleted.
A process killed at any point leaves one of these layouts:

    during the write                 target (previous) + .tmp (partial)
    between the two renames          .old (previous)   + .tmp (complete)   -- no target!
    while deleting the old copy      target (new)      + .old (partly deleted)

``recover_directory`` turns each of them back into ``target`` alone (the previous version in the
first two cases: nothing here can tell a complete ``.tmp`` from a partial one; checkpoints, which
can, do better in ``training/checkpoint.py``). A file is written as ``.<name>.<pid>.<random>.tmp``
and renamed over ``name``.

``mkstemp``/``mkdtemp`` create their files 0600 and folders 0700 (private, whatever the umask);
the temporary file or folder is given the mode a plain ``open``/``mkdir`` would give under the
user's umask (typically 0644 / 0755) before it is renamed into place, so that a saved model can
be read by the other users the umask allows (a server's account, a colleague).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``);
    elsewhere set and put back at once, under a lock (other threads may still race that window)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_mode(directory: bool) -> int:
    """The mode ``mkdir`` (0777) or ``open`` (0666) would give under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def tmp_dirs(target: Path) -> list[Path]:
    """``.<name>.tmp-*`` siblings of ``target``: folders being written, or left by killed writes."""
    return sorted(target.parent.glob(f".{glob_escape(target.name)}.tmp-*"))


def old_dirs(target: Path) -> list[Path]:
    """``.<name>.old-*`` siblings of ``target``: previous versions being (or left to be) deleted."""
    return sorted(target.parent.glob(f".{glob_escape(target.name)}.old-*"))


def tmp_files(target: Path) -> list[Path]:
    """``.<name>.*.tmp`` siblings of the file ``target`` (see ``atomic_file``)."""
    return sorted(target.parent.glob(f".{glob_escape(target.name)}.*.tmp"))


def atomic_directory(target: Path, fill: Callable[[Path], None], durable: bool = False) -> None:
    """Write a folder with ``fill(tmp_dir)`` and swap it in for ``target`` with renames.

    Leftovers of earlier killed writes of ``target`` by processes that are gone are removed.
    ``durable``: flush the new folder's files to disk before the renames, and the renames after
    them, so that a power loss (not only a killed process) leaves the old or the new version.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target, only_dead=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))  # not mkdtemp's private 0700
        fill(tmp)
        if durable:
            fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if durable:
            fsync_tree(target.parent, recursive=False)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(folder: Path, recursive: bool = True) -> None:
    """fsync every file under ``folder`` (with ``recursive``) and the folders themselves (POSIX)."""
    if os.name != "posix":
        return
    paths = sorted(folder.rglob("*"), reverse=True) if recursive else []
    for path in [*paths, folder]:  # files before the folders that name them
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_directory(target: Path, only_dead: bool = False) -> bool:
    """Undo what killed ``atomic_directory`` writes of ``target`` left; True if a previous version
    was put back (``target`` was missing and a ``.old-*`` copy existed).

    ``only_dead``: touch only leftovers whose writer (the pid in the name) is no longer running on
    this machine, so a concurrent write is not disturbed; otherwise the caller owns the folder.
    """
    target = Path(target)
    stale = [p for p in (*tmp_dirs(target), *old_dirs(target)) if not only_dead or not writer_alive(p, target.name)]
    restored = False
    if not target.exists():
        olds = sorted((p for p in stale if ".old-" in p.name), key=lambda p: p.stat().st_mtime)
        if olds:  # killed between the two renames: the newest previous version is complete
            os.replace(olds[-1], target)
            stale.remove(olds[-1])
            restored = True
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return restored


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` when the block ends
    without an error (else delete it). Leftovers of killed writers that are gone are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_files(path, only_dead=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, default_mode(directory=False))  # not mkstemp's private 0600
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_files(path: Path, only_dead: bool = False) -> None:
    """Delete the ``.<name>.*.tmp`` files that killed ``atomic_file`` writes of ``path`` left."""
    path = Path(path)
    for tmp in tmp_files(path):
        if not only_dead or not writer_alive(tmp, path.name):
            tmp.unlink(missing_ok=True)


def writer_alive(leftover: Path, target_name: str) -> bool:
    """Whether the process whose pid follows ``.<target_name>.`` in a leftover's name (``tmp-<pid>-``,
    ``old-<pid>``, ``<pid>.``) may still be writing it.

    Unknown (no pid in the name, or not a POSIX system) counts as alive: never delete what may be
    in use. Our own pid counts as alive too (another thread of this process may be writing).
    """
    rest = leftover.name[len(target_name) + 2:]
    match = re.match(r"(?:tmp-|old-)?(\d+)(?:[-.]|$)", rest)
    if match is None or os.name != "posix":
        return True
    pid = int(match.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def glob_escape(name: str) -> str:
    """``name`` with glob wildcards escaped (a run named ``a[1]`` must not match ``a1``)."""
    return re.sub(r"([*?\[])", r"[\1]", name)
