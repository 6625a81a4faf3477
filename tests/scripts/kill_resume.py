"""Kill a real ``pal-adapters train`` run with SIGKILL at random moments, resume it each time, and check
that it ends with the same weights and the same log as a run never killed.

    python tests/scripts/kill_resume.py --kills 5 --seed 0

The toy problem of the tests (a tiny BERT saved to a folder, three JSONL tasks); each process
start costs the imports (a few seconds), so a kill lands anywhere in a run: in a step, an
evaluation, a checkpoint save or the final saves. Prints one line per kill (what the folder held
afterwards, and the step the next start resumed from) and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import toy_backbone, toy_tokenizer, write_toy_tasks  # noqa: E402

from pal_adapters.io import read_tensors  # noqa: E402
from pal_adapters.training.report import read_jsonl  # noqa: E402

ADAPTER = {"kind": "pal", "output_activation": "gelu", "hidden_size": 8, "num_heads": 2, "dropout": 0.2}


def setup(root: Path, steps: int) -> tuple[Path, Path]:
    base = root / "base"
    toy_backbone().save_pretrained(base)
    toy_tokenizer().save_pretrained(base)
    spec = write_toy_tasks(root / "data", n=48)
    training = {"batch_size": 8, "lr": 3e-3, "log_every": 1, "seed": 3, "eval_every": 7, "checkpoint_every": 2,
                "max_steps": steps}
    run_file = root / "run.yaml"
    run_file.write_text(yaml.safe_dump({"model": str(base), "adapter": ADAPTER, "training": training, **spec}))
    return run_file, base


def train_command(run_file: Path, out: Path, threads: int, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "pal_adapters.cli", "train", str(run_file), "--output-dir", str(out)]
    return command + (["--resume"] if resume else [])


def environment(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{p.relative_to(folder)}/{k}": v for p in sorted(folder.rglob("*.safetensors"))
            for k, v in read_tensors(p, None).items()}


def layout(out: Path) -> str:
    """What the output folder holds: the checkpoint's step and any leftovers of a killed save."""
    state = out / "checkpoint" / "trainer_state.json"
    step = json.loads(state.read_text())["step"] if state.is_file() else None
    leftovers = sorted(p.name.split("-")[0] for p in out.glob(".*")) if out.is_dir() else []
    return f"checkpoint step {step}, leftovers {leftovers or 'none'}"


def logged_step(out: Path) -> int:
    try:
        return max((r["step"] for r in read_jsonl(out / "log.jsonl")), default=0)
    except (OSError, ValueError):
        return 0


def run_until(command: list[str], out: Path, kill_step: int, extra: float, threads: int) -> tuple[int, str]:
    """Start ``command``; SIGKILL it ``extra`` seconds after its log reaches ``kill_step``."""
    with tempfile.TemporaryFile("w+") as sink:
        process = subprocess.Popen(command, env=environment(threads), stdout=sink, stderr=subprocess.STDOUT, text=True)
        while process.poll() is None and logged_step(out) < kill_step:
            time.sleep(0.02)
        time.sleep(extra)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        sink.seek(0)
        return process.returncode, sink.read()


def killed_run(run_file: Path, out: Path, args: argparse.Namespace) -> list[str]:
    rng = random.Random(args.seed)
    lines, resume = [], False
    for number in range(args.kills):
        low = logged_step(out) + 1  # a step this start has not logged yet
        if low >= args.steps:
            break
        kill_step, extra = rng.randint(low, min(low + 7, args.steps - 1)), rng.uniform(0.0, 0.4)
        code, output = run_until(train_command(run_file, out, args.threads, resume), out, kill_step, extra,
                                 args.threads)
        resumed = next((line for line in output.splitlines() if "resuming from" in line), "started at step 0")
        resume = not (code == 2 and "no complete checkpoint" in output)  # else a user starts from step 0
        if not resume:
            resumed = "refused to resume: no complete checkpoint yet"
        lines.append(f"kill {number + 1} after step {kill_step} + {extra:.2f}s (rc {code}): "
                     f"{resumed.strip().split('/')[-1]}; left {layout(out)}")
    final = subprocess.run(train_command(run_file, out, args.threads, resume), env=environment(args.threads),
                           capture_output=True, text=True, check=True)
    resumed = next((line for line in final.stdout.splitlines() if "resuming from" in line), "started at step 0")
    lines.append(f"final run: {resumed.strip().split('/')[-1]}")
    return lines


def compare(reference: Path, out: Path) -> list[str]:
    problems = []
    for folder in ("last", "best"):
        a, b = weights(reference / folder), weights(out / folder)
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            problems.append(f"{folder}/ weights differ")
    log_a, log_b = read_jsonl(reference / "log.jsonl"), read_jsonl(out / "log.jsonl")
    if log_a != log_b:
        problems.append(f"log.jsonl differs ({len(log_a)} vs {len(log_b)} records)")
    leftovers = [p.name for p in out.glob(".*")]
    if leftovers:
        problems.append(f"leftovers {leftovers}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed) for a look")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kill_resume-"))
    if args.keep:
        print(f"working in {root}")
    run_file, _ = setup(root, args.steps)
    start = time.perf_counter()
    subprocess.run(train_command(run_file, root / "reference", args.threads, False), env=environment(args.threads),
                   capture_output=True, check=True)
    print(f"uninterrupted run: {time.perf_counter() - start:.1f}s ({args.steps} steps, checkpoint every 2, "
          "eval every 7, log every step)")
    for line in killed_run(run_file, root / "killed", args):
        print(line)
    problems = compare(root / "reference", root / "killed")
    print("same last/ and best/ weights, same log, no leftovers" if not problems else "; ".join(problems))
    if not args.keep:
        shutil.rmtree(root)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
