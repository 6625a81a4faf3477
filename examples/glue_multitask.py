"""The demo with the Python API: one MiniLM backbone, PALs and a head per task, four GLUE tasks at once.

    python examples/glue_multitask.py                          # ~1.5 min on 2 idle CPU cores
    python examples/glue_multitask.py --max-steps 600 --max-train 0 --max-eval 0   # a real run

Trains SST-2, MRPC, STS-B and RTE jointly (annealed task sampling, backbone tuned with the PALs),
prints the best dev metrics and the parameter budget, then runs every task on the same two
sentence pairs with ``predict_all``. Outputs go to ``runs/glue_multitask/`` (best/, last/, log.jsonl).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the packaged MiniLM and local TSVs: nothing to download

from pal_adapters import MultiTaskModel
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.report import format_eval_table
from pal_adapters.training.setup import load_backbone
from pal_adapters.training.taskdefs import load_task_defs

EXAMPLES = Path(__file__).resolve().parent
PAIRS = [("The film is a gripping, funny delight.", "Audiences loved this movie."),
         ("A man is playing a guitar.", "A woman is slicing an onion.")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(EXAMPLES.parents[1] / "shared/data/glue"))
    p.add_argument("--tasks", default="sst2,mrpc,stsb,rte", help="comma-separated keys of examples/glue.yaml")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-train", type=int, default=2000, help="examples per task (0 = all)")
    p.add_argument("--max-eval", type=int, default=200, help="dev examples per task (0 = all)")
    p.add_argument("--output-dir", default="runs/glue_multitask")
    args = p.parse_args()

    # Task definitions (type, labels, metrics, data source) come from the same file the CLI uses.
    defs = load_task_defs(EXAMPLES / "glue.yaml", data_dir=args.data_dir)
    defs = {name: defs[name] for name in args.tasks.split(",")}
    config = TrainConfig(
        model="minilm", adapter="pal", freeze_backbone=False,  # PALs: backbone and adapters tuned jointly
        lr=1e-4, adapter_lr=1e-3,  # fresh adapters and heads need a larger step than the pretrained backbone
        sampling="annealed", epochs=3,  # epochs only shape the annealing schedule; max_steps sets the length
        max_steps=args.max_steps, batch_size=args.batch_size, eval_every=max(1, args.max_steps // 2),
        max_train_examples=args.max_train, max_eval_examples=args.max_eval, output_dir=args.output_dir)
    backbone, tokenizer = load_backbone(config.model)
    trainer = MultiTaskTrainer(config, defs, backbone=backbone, tokenizer=tokenizer)
    result = trainer.fit()
    print(f"\nbest dev metrics (step {result.best_step} of {result.steps}, sum {result.best_score:.3f}):")
    print(format_eval_table(result.best_metrics))
    print(trainer.model.parameter_report())

    # Reload the best checkpoint onto a fresh copy of the base encoder, as a user of the model would.
    model = MultiTaskModel.from_pretrained(result.output_dir / "best", backbone=load_backbone(config.model)[0])
    model.eval()
    batch = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    # Every task on the same input; the layers below the lowest adapter run once for all tasks.
    # (Single-sentence tasks such as SST-2 simply read the pair as one text.)
    outputs = model.predict_all(**batch)
    for i, (a, b) in enumerate(PAIRS):
        print(f"\n{a!r} / {b!r}")
        for task, logits in outputs.items():
            if model.tasks[task].type == "regression":
                print(f"  {task:<6} score {logits[i].item():.2f}")
            else:
                probs = logits[i].softmax(-1)
                label = model.tasks[task].labels[int(probs.argmax())]
                print(f"  {task:<6} {label} ({probs.max().item():.2f})")


if __name__ == "__main__":
    main()
