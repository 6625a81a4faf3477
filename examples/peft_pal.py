"""PAL and LHUC adapters through PEFT's own API (``import pal_adapters.peft``), on the packaged MiniLM.

Trains a PAL adapter and an LHUC adapter for SST-2 with ``transformers.Trainer`` (a few steps:
this shows the mechanics, not a score), then: ``set_adapter`` switching, a mixed batch with
``adapter_names=[...]``, ``save_pretrained`` -> ``PeftModel.from_pretrained``, ``merge_and_unload``
of the LHUC adapter, and the PAL adapter written as a pal_adapters task folder that
``MultiTaskModel.load_task`` reads. Reads SST-2 from ../shared/data/glue when present, otherwise a
small built-in set of sentences. About 30 s on one CPU thread.

    python examples/peft_pal.py [--steps 30] [--threads 1] [--out runs/peft_pal]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from pal_adapters import add_pal
from pal_adapters.model_path import resolve_model_path
from pal_adapters.peft import PalPeftConfig, to_pal_task

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "SST-2" / "train.tsv"
WORDS = {1: ["great", "lovely", "moving", "funny", "superb"], 0: ["dull", "awful", "boring", "clumsy", "tedious"]}


def sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """SST-2 rows if the data is here, else ``the film was <word>`` with a positive or negative word."""
    rng = random.Random(seed)
    if SST2.is_file():
        with open(SST2, newline="") as f:
            rows = [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        return rng.sample(rows, n)
    return [(f"the film was {rng.choice(WORDS[y])} and {rng.choice(['long', 'short', 'new'])}", y)
            for y in (rng.randint(0, 1) for _ in range(n))]


def encode(tokenizer, rows: list[tuple[str, int]]) -> list[dict[str, torch.Tensor]]:
    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(y)} for i, (_, y) in enumerate(rows)]


def accuracy(model, rows) -> float:
    model.eval()
    with torch.no_grad():
        batch = {k: torch.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}
        return (model(**batch).logits.argmax(-1) == torch.stack([r["labels"] for r in rows])).float().mean().item()


def train(model, rows, steps: int, out: Path, lr: float) -> None:
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=16, max_steps=steps, learning_rate=lr,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows).train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/peft_pal"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    path = resolve_model_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    train_rows, dev_rows = encode(tokenizer, sentences(320)), encode(tokenizer, sentences(96, seed=1))

    # 1. One PEFT method, several kinds: PAL for "sst2_pal", LHUC for "sst2_lhuc" (task_type adds the classifier).
    model = get_peft_model(base, PalPeftConfig(kind="pal", task_type="SEQ_CLS"),
                           adapter_name="sst2_pal")
    model.add_adapter("sst2_lhuc", PalPeftConfig(kind="lhuc", task_type="SEQ_CLS"))
    model.print_trainable_parameters()
    for name, lr in (("sst2_pal", 1e-2), ("sst2_lhuc", 5e-2)):
        model.set_adapter(name)
        before = accuracy(model, dev_rows)
        train(model, train_rows, a.steps, a.out / name, lr)
        after = accuracy(model, dev_rows)
        print(f"{name}: dev accuracy {before:.3f} -> {after:.3f} after {a.steps} steps (mechanics, not a score)")

    # 2. A mixed batch: row i uses adapter_names[i]; each row equals its own adapter's forward.
    batch = {k: torch.stack([r[k] for r in dev_rows[:4]]) for k in ("input_ids", "attention_mask")}
    names = ["sst2_pal", "sst2_lhuc", "sst2_lhuc", "sst2_pal"]
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
        model.set_adapter("sst2_pal")
        alone = model(**batch).logits
        print(f"mixed batch vs sst2_pal alone, rows 0 and 3: max |diff| {(mixed - alone)[[0, 3]].abs().max():.2e}")
        with model.disable_adapter():
            print("bare MiniLM logits (classifier untrained):", model(**batch).logits[0].tolist())

    # 3. save_pretrained -> PeftModel.from_pretrained: the same logits.
    model.save_pretrained(str(a.out / "peft"))
    fresh = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    loaded = PeftModel.from_pretrained(fresh, str(a.out / "peft" / "sst2_pal"), adapter_name="sst2_pal").eval()
    with torch.no_grad():
        print(f"reloaded sst2_pal: max |diff| {(loaded(**batch).logits - alone).abs().max():.2e}")

    # 4. The PAL adapter as a pal_adapters task, read by the multi-task model (same encoder outputs).
    to_pal_task(model, a.out / "pal_task" / "sst2_pal", adapter_name="sst2_pal")
    multi = add_pal(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), {}).eval()
    multi.load_task(a.out / "pal_task" / "sst2_pal")
    with torch.no_grad(), multi.use_task("sst2_pal"):
        ours = multi.backbone(**batch).last_hidden_state
    with torch.no_grad():
        theirs = model.base_model.model.bert(**batch).last_hidden_state
    print(f"pal_adapters task vs PEFT adapter, encoder outputs: max |diff| {(ours - theirs).abs().max():.2e}")

    # 5. LHUC folds into the LayerNorms (like IA3); PAL cannot and says so.
    model.set_adapter("sst2_lhuc")
    with torch.no_grad():
        expected = model(**batch).logits
    try:
        model.base_model.merge_and_unload(adapter_names=["sst2_pal"])
    except ValueError as err:
        print("merge_and_unload(sst2_pal):", err)
    merged = model.merge_and_unload()
    with torch.no_grad():
        print(f"merged LHUC model: max |diff| {(merged(**batch).logits - expected).abs().max():.2e}")


if __name__ == "__main__":
    main()
