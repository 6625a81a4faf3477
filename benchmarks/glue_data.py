"""Tasks, budget and models of the GLUE accuracy benchmark (and a synthetic GLUE for its smoke test)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pal_adapters.training.readers import load_split
from pal_adapters.training.taskdefs import TaskDef, load_task_defs

TASKS = ("cola", "sst2", "mrpc", "stsb", "rte")
EPOCHS = {"cola": 3, "sst2": 1, "mrpc": 3, "stsb": 3, "rte": 3}  # SST-2: one epoch of its 20k cap
TRAIN_CAP = 20_000
BATCH = 32
TASKS_FILE = Path(__file__).resolve().parents[1] / "examples" / "glue.yaml"


def load_defs(data_dir: str, tasks: list[str], task_overrides: dict[str, Any]) -> dict[str, TaskDef]:
    """The tasks' definitions from ``examples/glue.yaml``, with TaskConfig fields overridden."""
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"tasks {bad} are not in this benchmark; choose from {list(TASKS)}")
    defs = load_task_defs(str(TASKS_FILE), data_dir=data_dir)
    return {t: dataclasses.replace(defs[t], task=dataclasses.replace(defs[t].task, **task_overrides))
            for t in tasks}


def steps_per_task(defs: dict[str, TaskDef], fraction: float, fixed: int = 0) -> dict[str, int]:
    """Optimizer steps each task gets: ``fraction`` of EPOCHS passes at batch 32 (or ``fixed``)."""
    if fixed:
        return {t: fixed for t in defs}
    steps = {}
    for name, definition in defs.items():
        rows = min(len(load_split(definition, "train")), TRAIN_CAP)
        steps[name] = max(1, round(fraction * EPOCHS[name] * math.ceil(rows / BATCH)))
    return steps


# ---- models -------------------------------------------------------------------------------------
def build_factories(model: str, work: Path) -> tuple[Callable[[], tuple[nn.Module, Any]], Callable[[int], nn.Module]]:
    """(backbone + tokenizer factory, sequence-classification model factory) for ``minilm`` or ``tiny``."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    if model == "tiny":
        from transformers import BertConfig, BertTokenizer

        tokenizer = BertTokenizer(vocab=str(work / "glue" / "vocab.txt"))
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=37)

        def tiny_backbone():
            torch.manual_seed(0)
            return AutoModel.from_config(config), tokenizer

        def tiny_seq_cls(num_labels: int):
            torch.manual_seed(0)
            return AutoModelForSequenceClassification.from_config(with_num_labels(config, num_labels))

        return tiny_backbone, tiny_seq_cls
    from pal_adapters.model_path import resolve_model_path
    from pal_adapters.training.setup import load_backbone

    path = resolve_model_path(model)
    return (lambda: load_backbone(model)), (lambda n: AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=n))


def with_num_labels(config, num_labels: int):
    """A copy of an HF config with ``num_labels`` (1 means regression, as in BertForSequenceClassification)."""
    copy = config.__class__.from_dict(config.to_dict())
    copy.num_labels = num_labels
    return copy


# ---- synthetic GLUE -----------------------------------------------------------------------------
WORDS = "the a film movie good bad great awful man dog ran sat on mat is was not very plot acting".split()
HEADERS = {
    "SST-2": "sentence\tlabel",
    "MRPC": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    "STS-B": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "RTE": "index\tsentence1\tsentence2\tlabel",
}


def _row(folder: str, i: int, rng: random.Random) -> str:
    a, b = (" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) for _ in range(2))
    label = rng.randint(0, 1)
    return {
        "CoLA": f"src\t{label}\t\t{a}",
        "SST-2": f"{a}\t{label}",
        "MRPC": f"{label}\t{i}\t{i + 1}\t{a}\t{b}",
        "STS-B": f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{rng.uniform(0, 5):.3f}",
        "RTE": f"{i}\t{a}\t{b}\t{('entailment', 'not_entailment')[label]}",
    }[folder]


def write_synthetic_glue(root: Path, train_rows: int = 48, dev_rows: int = 24) -> Path:
    """GLUE-format TSVs of random sentences for the five tasks, and a vocabulary for them."""
    rng = random.Random(0)
    for folder in ("CoLA", "SST-2", "MRPC", "STS-B", "RTE"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", train_rows), ("dev", dev_rows)):
            lines = ([HEADERS[folder]] if folder in HEADERS else []) + [_row(folder, i, rng) for i in range(n)]
            (root / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return root
