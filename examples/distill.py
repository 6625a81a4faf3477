"""MT-DNN-KD: distil an ensemble of two teachers into one student, online or from precomputed probabilities.

    python examples/distill.py                                          # ~2 min on 2 idle CPU cores
    python examples/distill.py --task rte --teacher-steps 300 --student-steps 300 --max-train 0

Trains two teachers on one task with different seeds (each saved with ``save_pretrained``), then two
students whose loss is ``alpha·KD + (1 − alpha)·CE``, KD = −Σ_c Q(c|x) log P(c|x), Q = the mean of
the teachers' class probabilities: (a) online, the teachers run on every training batch
(``distill: {teachers: ...}``); (b) precomputed, their probabilities written once with
``write_teacher_probabilities`` and read back by row (``distill: {probabilities: ...}``).
Prints every model's best dev metrics. Outputs go to ``runs/distill/``.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from torch.utils.data import DataLoader

from pal_adapters import MultiTaskModel
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.data import DynamicPaddingCollator
from pal_adapters.training.distill import write_teacher_probabilities
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.report import format_eval_table
from pal_adapters.training.setup import load_backbone, prepare_data
from pal_adapters.training.taskdefs import load_task_defs

EXAMPLES = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(EXAMPLES.parents[1] / "shared/data/glue"))
    p.add_argument("--task", default="mrpc", help="a classification task of examples/glue.yaml")
    p.add_argument("--teacher-steps", type=int, default=40)
    p.add_argument("--student-steps", type=int, default=40)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the KD loss (1 = soft targets only)")
    p.add_argument("--max-train", type=int, default=1000, help="training examples (0 = all)")
    p.add_argument("--max-eval", type=int, default=0, help="dev examples (0 = all)")
    p.add_argument("--output-dir", default="runs/distill")
    args = p.parse_args()
    task, out = args.task, Path(args.output_dir)
    defs = {task: load_task_defs(EXAMPLES / "glue.yaml", data_dir=args.data_dir)[task]}
    # Frozen backbone: only adapters and heads train, so every saved model is ~1 MB, not a 90 MB encoder
    # copy. One task, so no sampling to anneal: one "epoch" of max_steps, evaluated once at the end.
    base = TrainConfig(freeze_backbone=True, adapter_lr=1e-3, batch_size=16, epochs=1, max_steps=args.student_steps,
                       max_train_examples=args.max_train, max_eval_examples=args.max_eval)
    results = {}

    def train(name: str, **changes) -> Path:
        result = MultiTaskTrainer(base.replace(output_dir=str(out / name), **changes), defs).fit()
        results[f"{task} {name}"] = result.best_metrics[task]
        return result.output_dir / "best"

    # Different seeds: different initial heads and batch orders (and, with --max-train, different
    # training subsets), so the two teachers differ and their mean is a softer target than either.
    teachers = [train(f"teacher-seed{s}", seed=s, max_steps=args.teacher_steps) for s in (1, 2)]
    train("student-online", distill={"teachers": {task: teachers}, "alpha": args.alpha})

    # Precomputed targets: row i of a file must be training example i of the *student's* training
    # set. With max_train_examples that is a sample drawn with the student's seed, so build it with
    # the student's config, and batch it in order (make_dataloader would group rows by length).
    tokenizer = load_backbone(base.model)[1]
    rows = prepare_data(defs, tokenizer, base)[task].train
    batches = DataLoader(rows, batch_size=64, collate_fn=DynamicPaddingCollator(tokenizer))
    files = []
    for folder in teachers:
        teacher = MultiTaskModel.from_pretrained(folder, backbone=load_backbone(base.model)[0])
        files.append(write_teacher_probabilities(teacher, task, batches, folder.parent / "train-probs.safetensors"))
    print(f"wrote {len(rows)} rows of teacher probabilities to {[str(f) for f in files]}")
    train("student-precomputed", distill={"probabilities": {task: files}, "alpha": args.alpha})

    print(f"\nbest dev metrics ({task}, teachers {args.teacher_steps} steps, students {args.student_steps}, "
          f"alpha {args.alpha}):")
    print(format_eval_table(results))


if __name__ == "__main__":
    main()
