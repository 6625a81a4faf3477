"""Small helpers shared by the benchmark scripts: interleaved timing, run metadata, JSON output.

Timing on a shared, noisy CPU: every case is run once per *round*, in a freshly shuffled order,
so slow phases of the machine hit all cases alike; statistics are medians over rounds, and
ratios are taken *within* a round (case / reference of the same round) before the median.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# glibc returns large freed blocks to the OS by default, so every big activation page-faults anew
# (tens of thousands of faults per forward on this machine). Benchmarks re-run themselves with
# malloc tuned to keep freed memory, which measures the model rather than the allocator.
STEADY_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def steady_malloc_reexec(disabled: bool = False) -> None:
    """Re-run this process under ``GLIBC_TUNABLES=STEADY_MALLOC`` (Linux; once; unless ``disabled``)."""
    if disabled or "GLIBC_TUNABLES" in os.environ or sys.platform != "linux":
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": STEADY_MALLOC})

# A case: a zero-argument callable to time, and an optional factory of the context it runs in
# (entered and left outside the timed region, e.g. "route to task X" or "hooks detached").
Case = tuple[Callable[[], Any], Callable[[], AbstractContextManager] | None]


def time_once(fn: Callable[[], Any], context: Callable[[], AbstractContextManager] | None = None) -> float:
    """Seconds taken by one ``fn()`` call, run inside ``context()`` (not timed)."""
    with (context() if context is not None else nullcontext()):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def paired_timings(reference: Case, cases: Mapping[str, Case], rounds: int, warmup: int = 1,
                   seed: int = 0, budget_s: float | None = None,
                   progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """Time each case back to back with the reference, ``rounds`` times.

    A round visits the cases in a fresh random order; each visit times the reference and the case
    next to each other (alternating which goes first), so a burst of load from other processes
    slows both sides of a pair alike and cancels in their ratio. ``warmup`` untimed calls of every
    case come first. The garbage collector runs before, and is off during, each round. With
    ``budget_s``, no round starts that would end past it, judging by the last round's length
    (at least one round runs).
    Returns ``{case: {"reference": [s, ...], "case": [s, ...]}}``, one entry per round.
    """
    rng = random.Random(seed)
    names = list(cases)
    for _ in range(warmup):
        for case in (reference, *cases.values()):
            time_once(*case)
    out: dict[str, dict[str, list[float]]] = {name: {"reference": [], "case": []} for name in names}
    start = last = time.perf_counter()
    for r in range(rounds):
        now = time.perf_counter()
        if r and budget_s is not None and (now - start) + (now - last) > budget_s:
            print(f"  another round would overrun the {budget_s:.0f} s budget: stopping after {r} rounds",
                  file=sys.stderr)
            break
        last = now
        order = names[:]
        rng.shuffle(order)
        gc.collect()
        gc.disable()
        try:
            for i, name in enumerate(order):
                first, second = ("reference", "case") if (r + i) % 2 == 0 else ("case", "reference")
                for role in (first, second):
                    out[name][role].append(time_once(*(reference if role == "reference" else cases[name])))
        finally:
            gc.enable()
        if progress:
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return out


def pair_ratios(pairs: Mapping[str, list[float]]) -> list[float]:
    """``case / reference`` for every pair of ``paired_timings``."""
    return [c / ref for c, ref in zip(pairs["case"], pairs["reference"], strict=True)]


def summary(values: list[float]) -> dict[str, float]:
    """Median and quartiles (the spread a reader should trust the median to)."""
    if len(values) < 2:
        v = values[0]
        return {"median": v, "q1": v, "q3": v}
    q1, _, q3 = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q1, "q3": q3}


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, load and library versions: what a reader needs to compare two runs."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        # Settings that change CPU timings: thread pools and the allocator.
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLIBC_TUNABLES", "LD_PRELOAD")
                if k in os.environ},
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def run_metadata(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line, the UTC date and the machine of this run."""
    argv = sys.argv if argv is None else argv
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in argv),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically: a temporary file in the same folder, then rename.

    A relative ``path`` is taken inside ``benchmarks/results/``.
    """
    path = Path(path)
    if not path.is_absolute():
        path = RESULTS_DIR / path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a result file is for everyone
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain left/right-aligned text table (first column left, the others right)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs)
        return "  ".join(padded)

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
