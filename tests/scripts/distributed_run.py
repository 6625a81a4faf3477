"""Run by tests/test_distributed.py under ``accelerate launch``: train the toy problem, save each
process's final trainable weights. Prints the number of processes accelerate started."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import toy_backbone, toy_tokenizer  # noqa: E402

from pal_adapters.training.config import TrainConfig  # noqa: E402
from pal_adapters.training.distributed import make_accelerator  # noqa: E402
from pal_adapters.training.loop import MultiTaskTrainer  # noqa: E402
from pal_adapters.training.taskdefs import load_task_defs  # noqa: E402

CONFIG = dict(max_steps=8, batch_size=16, lr=3e-3, eval_every=100, log_every=1, seed=5,
              adapter={"kind": "pal", "hidden_size": 8, "num_heads": 2, "dropout": 0.0})


def run(task_file: str, out: str, mixed: bool) -> dict:
    config = TrainConfig(output_dir=f"{out}/run", mixed_batches=mixed, **CONFIG)
    accelerator = make_accelerator(config)
    defs = load_task_defs(task_file)
    # Heads without dropout, so every process computes the same thing as one process would.
    defs = {n: dataclasses.replace(d, task=dataclasses.replace(d.task, dropout=0.0))
            for n, d in defs.items()}
    trainer = MultiTaskTrainer(config, defs, backbone=toy_backbone(), tokenizer=toy_tokenizer(),
                               accelerator=accelerator)
    trainer.fit()
    weights = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}
    save_file(weights, f"{out}/rank{accelerator.process_index}.safetensors")
    print(f"num_processes={accelerator.num_processes}")
    return weights


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3] == "mixed")
