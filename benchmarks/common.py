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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

# PAL_BENCH_RESULTS moves the output (benchmarks/gpu.sh points it under $OUT).
RESULTS_DIR = Path(os.environ.get("PAL_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))

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


_CUDA_TIMING = False  # set by configure_device("cuda"): time with CUDA events, not the host clock
# The CPU clock: wall time by default; set_clock("cpu") times the CPU seconds this process used
# (time.process_time), which other tenants of a shared machine do not inflate. With one torch
# thread it is the cost of the work itself; with several it adds up their CPU time.
_CLOCK = time.perf_counter


def set_clock(name: str) -> None:
    """``"wall"`` (time.perf_counter) or ``"cpu"`` (time.process_time) for CPU timings."""
    global _CLOCK
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    if name not in clocks:
        raise ValueError(f"clock={name!r} is not valid; choose one of {sorted(clocks)}")
    _CLOCK = clocks[name]


def time_once(fn: Callable[[], Any], context: Callable[[], AbstractContextManager] | None = None) -> float:
    """Seconds taken by one ``fn()`` call, run inside ``context()`` (not timed).

    On CUDA (``configure_device("cuda")``) the time is read from CUDA events around the call after
    a synchronisation, so it covers the queued kernels and not just their launch.
    """
    with (context() if context is not None else nullcontext()):
        if _CUDA_TIMING:
            import torch

            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start_event.record()
            fn()
            end_event.record()
            end_event.synchronize()
            return start_event.elapsed_time(end_event) / 1000.0
        start = _CLOCK()
        fn()
        return _CLOCK() - start


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def add_device_args(parser: Any, threads: bool = True) -> None:
    """``--device``, ``--dtype``, ``--compile``, ``--threads``, ``--smoke``: shared by every script."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA events time each call)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights and activations")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first (eager by default)")
    if threads:
        parser.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads (1 is the stable choice on a shared 2-core machine)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and 1 round: checks the script runs")
    parser.add_argument("--results-dir", default=None, help="write JSON/PNG here instead of benchmarks/results/")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="CPU timings: wall time, or this process's CPU time (robust on a busy shared machine)")


def add_speed_args(parser: Any, rounds: int) -> None:
    """``--rounds``, ``--quick``, ``--system-malloc``, ``--output`` and the device options of a speed script."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--quick", action="store_true", help="length 64, 3 rounds")
    parser.add_argument("--system-malloc", action="store_true", help="do not re-run under STEADY_MALLOC")
    parser.add_argument("--output", default=None, help="JSON name under benchmarks/results/")
    add_device_args(parser)


def resolve_speed_args(args: Any, stem: str, smoke: dict[str, Any]) -> Any:
    """Apply ``--quick`` / ``--smoke`` (the ``smoke`` settings) and name the output after the profile and
    device, e.g. ``mixed_batch_quick.json`` or ``mixed_batch_cuda_bf16_compile.json``."""
    set_results_dir(args.results_dir)
    if args.quick:
        args.length, args.rounds = 64, 3
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    if args.output is None:
        tag = "" if (args.device, args.dtype, args.compile) == ("cpu", "fp32", False) else \
            f"_{args.device}_{args.dtype}" + ("_compile" if args.compile else "")
        args.output = f"{stem}{'_smoke' if args.smoke else '_quick' if args.quick else ''}{tag}.json"
    return args


def set_results_dir(path: str | Path | None) -> None:
    """Send this run's JSON and PNG files to ``path`` (None: keep the default)."""
    global RESULTS_DIR
    if path is not None:
        RESULTS_DIR = Path(path)


def configure_device(device: str, threads: int, clock: str = "wall") -> Any:
    """Set torch's thread count and the timer for ``device`` (``clock`` on CPU); returns the device."""
    global _CUDA_TIMING
    import torch

    torch.set_num_threads(threads)
    set_clock(clock)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    _CUDA_TIMING = dev.type == "cuda"
    return dev


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES[name])


def count_ops(fn: Callable[[], Any]) -> dict[str, int]:
    """Top-level aten operators of one ``fn()`` call, by name (from ``torch.profiler``).

    "Top-level" means called from Python, not from inside another aten op (``aten::linear`` counts
    once, its ``aten::addmm`` not): in eager mode each is one dispatch, and on a GPU at small
    batches each non-view op is at least one kernel launch, so the count, not FLOPs, sets the cost.
    """
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: Counter[str] = Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            counts[event.name] += 1
    return dict(counts)


VIEW_OPS = frozenset({"aten::view", "aten::transpose", "aten::as_strided", "aten::unbind", "aten::permute",
                      "aten::unflatten", "aten::slice", "aten::select", "aten::unsqueeze", "aten::t",
                      "aten::expand", "aten::split", "aten::chunk", "aten::narrow", "aten::detach",
                      "aten::alias", "aten::flatten", "aten::_reshape_alias"})


def op_delta(counts: dict[str, int], reference: dict[str, int], per: int = 1) -> dict[str, Any]:
    """Ops of ``counts`` beyond ``reference``, divided by ``per`` (e.g. adapted layers): total,
    of which view-only ops (no kernel), and by name."""
    names = set(counts) | set(reference)
    delta = {n: counts.get(n, 0) - reference.get(n, 0) for n in names}
    delta = {n: d for n, d in sorted(delta.items()) if d}
    total = sum(delta.values())
    views = sum(d for n, d in delta.items() if n in VIEW_OPS)
    return {"total": total / per, "views": views / per, "compute": (total - views) / per,
            "by_name": {n: d / per for n, d in delta.items()}}


def save_plot(path: str | Path, draw: Callable[[Any], None]) -> Path | None:
    """Draw with ``draw(ax)`` into a PNG under ``benchmarks/results/``; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    path = Path(path)
    if not path.is_absolute():
        path = RESULTS_DIR / path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    for package in ("transformers", "peft"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
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
    """A plain left/right-aligned text table (first column left, the others right); short rows
    (a note in place of figures) are padded with empty cells."""
    rows = [[*r, *[""] * (len(header) - len(r))] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs)
        return "  ".join(padded)

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
TINY_SHAPE = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)
BERT_BASE_SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SHAPES = {"minilm": MINILM_SHAPE, "bert-base": BERT_BASE_SHAPE, "tiny": TINY_SHAPE}  # random-encoder shapes by name


def pal_training_model(shape: Mapping[str, int], frozen: bool, checkpointing: bool = False,
                       attention_dropout: bool = True, device: str = "cpu") -> Any:
    """A seeded random BERT of ``shape`` with PALs in all layers and one 2-way head ("task"), in
    train mode: what the memory benchmarks train. ``attention_dropout=False`` sets the backbone's
    attention-probability dropout and the PALs' to 0."""
    import warnings

    import torch
    from transformers import AutoConfig, AutoModel

    from pal_adapters import add_pal

    torch.manual_seed(0)
    extra = {} if attention_dropout else {"attention_probs_dropout_prob": 0.0}
    backbone = AutoModel.from_config(AutoConfig.for_model("bert", **shape, **extra))
    if checkpointing:
        with warnings.catch_warnings():  # transformers 5 renames it; the old name is what users call
            warnings.simplefilter("ignore", FutureWarning)
            backbone.gradient_checkpointing_enable()
    adapter = "pal" if attention_dropout else {"kind": "pal", "dropout": 0.0}
    return add_pal(backbone, {"task": 2}, adapter=adapter, freeze_backbone=frozen).to(device).train()


def minilm_backbone(smoke: bool = False) -> tuple[Any, str]:
    """The packaged all-MiniLM-L6-v2 encoder when it is installed, else a random BERT of its shape
    (6 layers, d_m 384, 12 heads: the same cost); with ``smoke`` a tiny random BERT.
    Returns ``(model, description)``."""
    import torch
    from transformers import AutoConfig, AutoModel

    if not smoke:
        try:
            from pal_adapters.training.setup import load_backbone

            return load_backbone("minilm")[0], "packaged all-MiniLM-L6-v2 (6 layers, d_m 384)"
        except Exception as err:  # not installed (e.g. on the GPU machine): same shape, random weights
            print(f"packaged MiniLM unavailable ({type(err).__name__}: {err}); random weights of its shape",
                  file=sys.stderr)
    torch.manual_seed(0)
    shape = TINY_SHAPE if smoke else MINILM_SHAPE
    return AutoModel.from_config(AutoConfig.for_model("bert", **shape)), f"random BERT {shape}"


def padded_inputs(batch: int, length: int, device: Any = "cpu", seed: int = 1, vocab: int = 1000) -> dict[str, Any]:
    """Random ids; every third row padded over its last quarter (real batches have padding)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[::3, length * 3 // 4:] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def randomize_(module: Any, prefix: str, std: float = 0.02, seed: int = 0) -> None:
    """Give every parameter whose name contains ``prefix`` N(0, std) values, so that no adapter
    is an exact zero (identity-initialised up-projections would otherwise multiply zeros)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if prefix in name:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))


def run_on_processes(script: str, worker: Callable[[Any], Any], args: Any, processes: int = 2) -> None:
    """Run ``worker(args)`` in each of ``processes`` CPU processes: this script relaunches itself
    under ``torchrun --standalone`` (a free rendezvous port; gloo) and exits with its status.
    ``args.argv`` is the command as the user typed it, for ``run_metadata``."""
    key = "PAL_BENCHMARK_ARGV"
    args.argv = shlex.split(os.environ.get(key, shlex.join(sys.argv)))
    if "RANK" in os.environ:
        worker(args)
        return
    env = {**os.environ, key: shlex.join(sys.argv), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           script, *sys.argv[1:]]
    sys.exit(subprocess.run(cmd, env=env).returncode)
