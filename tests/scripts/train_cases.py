"""Run by tests/test_fsdp.py and tests/test_distributed.py under ``accelerate launch`` (2 CPU
processes, gloo) with MODE ``fsdp``, ``ddp`` or ``flat`` (how the model is sharded or its gradients
averaged; ``+bf16`` for mixed precision, as ``benchmarks/fsdp_bf16.py`` runs it), or by the tests
themselves with ``none`` (one process): train the toy problem in every
case of ``CASES`` and write each case's final trainable weights (full, gathered) to
``out/<case>.safetensors``. The resume case stops at step 10
and a new trainer resumes from its checkpoint. With 2 processes the main process also saves the
sharded model, reloads it unsharded and saves that again (``<case>-saved``, ``<case>-saved-resaved``;
``save_task`` likewise)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import toy_backbone, toy_tokenizer  # noqa: E402

from pal_adapters.model import MultiTaskModel  # noqa: E402
from pal_adapters.training.config import TrainConfig  # noqa: E402
from pal_adapters.training.loop import MultiTaskTrainer  # noqa: E402
from pal_adapters.training.sharding import gathered  # noqa: E402
from pal_adapters.training.taskdefs import load_task_defs  # noqa: E402

BASE = dict(max_steps=20, batch_size=8, lr=3e-3, eval_every=100, log_every=1, seed=5, max_eval_examples=8,
            adapter={"kind": "pal", "hidden_size": 8, "num_heads": 2, "dropout": 0.0})
CASES = {
    "one_task": dict(),
    "mixed_accum": dict(mixed_batches=True, grad_accum=2, epochs=4, loss_weighting="uncertainty"),
    "mixed_small_frozen": dict(mixed_batches=True, batch_size=4, freeze_backbone=True),  # ranks miss tasks
    "mixed_two_rows": dict(mixed_batches=True, batch_size=2),  # a process often has no row at all
    "mixed_resume": dict(mixed_batches=True, checkpoint_every=10),
}


def trainer(task_file: str, out: Path, case: str, mode: str, accelerator) -> MultiTaskTrainer:
    name, _, precision = mode.partition("+")  # "fsdp+bf16": bf16 parameters in the forward, fp32 reductions
    engine = {"sharding": "fsdp"} if name == "fsdp" else {"grad_sync": name} if name in ("ddp", "flat") else {}
    engine |= {"mixed_precision": precision} if precision else {}
    config = TrainConfig(output_dir=str(out / case), **engine, **{**BASE, **CASES[case]})
    defs = load_task_defs(task_file)
    defs = {n: dataclasses.replace(d, task=dataclasses.replace(d.task, dropout=0.0)) for n, d in defs.items()}
    return MultiTaskTrainer(config, defs, backbone=toy_backbone(), tokenizer=toy_tokenizer(), accelerator=accelerator)


def run_case(task_file: str, out: Path, case: str, mode: str, accelerator) -> MultiTaskTrainer:
    t = trainer(task_file, out, case, mode, accelerator)
    if case == "mixed_resume":
        t.total_steps = 10  # stop in the middle (the schedule is still the 20-step one)
        t.fit()
        t = trainer(task_file, out, case, mode, accelerator)
        t.fit(resume=True)
    else:
        t.fit()
    accelerator = t.accelerator
    with gathered(t.model, t.sharded):
        if accelerator.is_main_process:
            weights = {n: p.detach().contiguous() for n, p in t.model.named_parameters() if p.requires_grad}
            save_file(weights, str(out / f"{case}.safetensors"))
            if t.sharded:
                t.model.save_pretrained(out / f"{case}-saved")
                t.model.save_task(out / f"{case}-task", "sentiment")
    if t.sharded and accelerator.is_main_process:
        plain = MultiTaskModel.from_pretrained(out / f"{case}-saved", backbone=toy_backbone())
        plain.save_pretrained(out / f"{case}-saved-resaved")
        plain.save_task(out / f"{case}-task-resaved", "sentiment")
    return t


def main(task_file: str, out: str, mode: str) -> None:
    accelerator = None
    for case in CASES:
        t = run_case(task_file, Path(out), case, mode, accelerator)
        accelerator = t.accelerator  # one Accelerator per process
    print(f"num_processes={accelerator.num_processes} sharded={t.sharded} ddp={t.ddp}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
