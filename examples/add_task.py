"""Add a task to a trained multi-task model without changing a single output of the tasks it has.

    python examples/add_task.py                                        # ~1 min on 2 idle CPU cores
    python examples/add_task.py --model-dir runs/glue_multitask/best   # add CoLA to another saved model

Without ``--model-dir`` a small SST-2 + MRPC model (frozen backbone) is trained first. Then only the
new task's adapter and head train, in a plain PyTorch loop; the old tasks' logits on a fixed batch are
checked to be bit-identical, and the new task alone is saved (``save_task``) and loaded into a fresh
model (``load_task``). The defaults show the mechanics, not a score: CoLA on a frozen MiniLM stays
near chance (MCC ~ 0) for the first few hundred steps.
"""
import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from pal_adapters import MultiTaskModel
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.data import make_dataloader, tokenize
from pal_adapters.training.evaluate import evaluate
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.readers import load_split
from pal_adapters.training.report import format_eval_table
from pal_adapters.training.setup import load_backbone
from pal_adapters.training.taskdefs import load_task_defs

EXAMPLES = Path(__file__).resolve().parent
PROBE = ["The film is a gripping, funny delight.", "Him the book gave to she."]


def train_base(defs, out: Path, steps: int) -> Path:
    """A quick SST-2 + MRPC model with a frozen backbone, so a task saved from it fits any MiniLM."""
    config = TrainConfig(freeze_backbone=True, adapter_lr=1e-3, max_steps=steps, batch_size=16, eval_every=steps,
                         max_train_examples=1000, max_eval_examples=200, output_dir=str(out))
    return MultiTaskTrainer(config, {t: defs[t] for t in ("sst2", "mrpc")}).fit().output_dir / "best"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(EXAMPLES.parents[1] / "shared/data/glue"))
    p.add_argument("--model-dir", help="a save_pretrained folder (default: train one for --base-steps)")
    p.add_argument("--base-steps", type=int, default=40)
    p.add_argument("--new-task", default="cola", help="a key of examples/glue.yaml the model lacks")
    p.add_argument("--max-steps", type=int, default=80)
    p.add_argument("--max-train", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--output-dir", default="runs/add_task")
    args = p.parse_args()
    defs = load_task_defs(EXAMPLES / "glue.yaml", data_dir=args.data_dir)
    model_dir = args.model_dir or train_base(defs, Path(args.output_dir) / "base", args.base_steps)
    backbone, tokenizer = load_backbone("minilm")
    model = MultiTaskModel.from_pretrained(model_dir, backbone=backbone)
    old, new = model.task_names, defs[args.new_task]
    probe = tokenizer(PROBE, padding=True, return_tensors="pt")
    before = model.eval().predict_all(**probe)

    model.add_task(new.name, new.task)  # fresh adapter (identity at init) and head
    for name, param in model.named_parameters():  # train the new task's adapter and head, nothing else
        param.requires_grad_(f"pal_adapters.{new.name}." in name or name.startswith(f"heads.{new.name}."))
    print(f"training {new.name}: {model.parameter_report().trainable:,} trainable parameters")
    train = load_split(new, "train").shuffle(seed=0)
    train = train.select(range(min(args.max_train, len(train))))
    loader = make_dataloader(tokenize(train, tokenizer, new.task.max_length), tokenizer, batch_size=16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    for step in range(args.max_steps):
        if step % len(loader) == 0:
            batches = iter(loader)  # each pass over the loader is a freshly shuffled epoch
        loss = model(**next(batches), task=new.name).loss  # the batch carries `labels`
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    dev_split = tokenize(load_split(new, "dev"), tokenizer, new.task.max_length)
    dev = make_dataloader(dev_split, tokenizer, 64, shuffle=False)
    print(format_eval_table(evaluate(model, {new.name: dev}, {new.name: new.metrics})))

    after = model.eval().predict_all(tasks=old, **probe)
    same = all(torch.equal(before[t], after[t]) for t in old)
    print(f"old tasks {old} bit-identical after adding and training {new.name!r}: {same}")

    # Portability: the new task alone (adapter + head + definition) into a model that never had it.
    task_dir = model.save_task(Path(args.output_dir) / f"{new.name}-task", new.name)
    fresh = MultiTaskModel.from_pretrained(model_dir, backbone=load_backbone("minilm")[0]).eval()
    fresh.load_task(task_dir)
    moved = torch.equal(fresh(**probe, task=new.name).logits, model(**probe, task=new.name).logits)
    print(f"{new.name!r} loaded from {task_dir} into a fresh model: tasks {fresh.task_names}, same logits: {moved}")
    if not (same and moved):
        raise SystemExit("check failed")


if __name__ == "__main__":
    main()
