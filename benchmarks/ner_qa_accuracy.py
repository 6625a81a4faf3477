"""NER and extractive-QA accuracy on the packaged MiniLM: single-task full fine-tunes against one
multi-task PAL model (SST-2, MRPC, STS-B, RTE, CoNLL-2003 NER, SQuAD) on one backbone.

Every run trains with the package's ``MultiTaskTrainer`` (the code behind ``pal-adapters train``):

- single-task: one task, backbone tuned, adapters detached (a plain full fine-tune + the task head);
- multi-task: all six tasks, backbone tuned jointly with one PAL set per task (all layers), round
  robin sampling so that every task gets exactly ``steps`` optimizer steps, as its single-task run.

Both see the same batch size, learning rates, schedule shape and seed. Metrics, at the last step:
CoNLL-2003 dev entity F1 (``seqeval`` default, conlleval-compatible mode) and SQuAD held-out F1
(trained on the questions of the first 38 articles of dev-v1.1.json, evaluated on the last 10: the
split is by article, never by question, because the train file is not available offline). The
target: the multi-task model within 1 F1 point of each single-task model.

    python benchmarks/ner_qa_accuracy.py --quick          # CPU profile, 1 thread
    python benchmarks/ner_qa_accuracy.py                  # default profile (hours on a CPU)
    python benchmarks/ner_qa_accuracy.py --quick --parts ner_single multi
    python benchmarks/ner_qa_accuracy.py --smoke          # tiny random model, synthetic data (tests)

Writes benchmarks/results/ner_qa_accuracy[_quick].json (command, machine, date, versions, figures);
parts run as separate processes (``--parts ... --output``) are compared by ``ner_qa_report.py``.
The parts are one function per task (``ner_*`` for NER, ``qa_*`` for QA) and a common ``main``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, format_table, run_metadata, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from glue_runs import drop_adapters  # noqa: E402
from ner_qa_report import HEADER, rows  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from pal_adapters.training.config import TrainConfig  # noqa: E402
from pal_adapters.training.loop import MultiTaskTrainer  # noqa: E402
from pal_adapters.training.report import read_jsonl  # noqa: E402
from pal_adapters.training.setup import load_backbone  # noqa: E402
from pal_adapters.training.taskdefs import load_task_defs  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARTS = ("ner_single", "qa_single", "multi")


@dataclass(frozen=True)
class Profile:
    """What every run gets. ``max_eval_examples`` caps every dev set (0 = whole)."""

    steps: int  # optimizer steps per task
    batch_size: int
    max_train_examples: int
    max_eval_examples: int
    lr: float = 1e-4  # the backbone's (MiniLM is small: 1e-4 as in the demo)
    adapter_lr: float = 1e-3  # adapters and heads
    max_length: int = 128
    seed: int = 42
    model: str = "minilm"  # "tiny": a random 2-layer BERT on MiniLM's vocabulary (smoke test)
    evals: int = 4  # evaluations over the run, evenly spaced (the last at the last step): the curve


PROFILES = {
    "smoke": Profile(steps=2, batch_size=4, max_train_examples=16, max_eval_examples=8, max_length=32,
                     model="tiny"),
    "quick": Profile(steps=40, batch_size=16, max_train_examples=4000, max_eval_examples=800),
    "default": Profile(steps=600, batch_size=32, max_train_examples=0, max_eval_examples=0),
}


# ---- NER (CoNLL-2003) ------------------------------------------------------------------------------
CONLL_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def ner_task_def(data: Path) -> dict[str, dict[str, Any]]:
    """CoNLL-2003 NER (IOB2, the hub's tag order) from ``data/conll2003/{train,dev}.txt``."""
    return {"conll": {"type": "token_classification", "num_labels": len(CONLL_TAGS), "labels": CONLL_TAGS,
                      "metrics": ["f1", "precision", "recall", "accuracy"],
                      "data": {"kind": "conll", "path": str(data / "conll2003")}}}


def ner_smoke_data(root: Path) -> None:
    """A synthetic ``conll2003/{train,dev}.txt`` for the smoke profile."""
    sentence = [("Peter", "B-PER"), ("Blackburn", "I-PER"), ("visited", "O"), ("Paris", "B-LOC"), (".", "O")]
    (root / "conll2003").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 16), ("dev", 8)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            lines += [f"{w} NNP O {t}" for w, t in sentence] + [""]
        (root / "conll2003" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def qa_smoke_data(root: Path, articles: int = 40) -> None:
    """A synthetic ``squad/dev-v1.1.json`` for the smoke profile (both article ranges non-empty)."""
    data = []
    for a in range(articles):
        context = f"The capital of country {a} is Paris, and its river is the Seine."
        qas = [{"id": f"{a}-0", "question": f"What is the capital of country {a}?",
                "answers": [{"text": "Paris", "answer_start": context.index("Paris")}]}]
        data.append({"title": f"A{a}", "paragraphs": [{"context": context, "qas": qas}]})
    (root / "squad").mkdir(parents=True, exist_ok=True)
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": data, "version": "1.1"}))


# ---- extractive QA (SQuAD): the QA part --------------------------------------------------------------
QA_MAX_LENGTH, QA_DOC_STRIDE = 192, 64  # windows: SQuAD contexts average ~150 MiniLM tokens


def qa_task_def(data: Path) -> dict[str, dict[str, Any]]:
    """SQuAD v1.1 from ``data/squad/dev-v1.1.json``: train on the questions of articles 0-37, evaluate
    on those of articles 38-47 (8,582 / 1,988 questions). Split by article, never by question: no
    paragraph is in both parts. Windows of 192 tokens sharing 64; answers over all windows."""
    if not (data / "squad" / "dev-v1.1.json").is_file():
        print(f"SQuAD: {data / 'squad' / 'dev-v1.1.json'} not found; QA parts skipped")
        return {}
    return {"squad": {"type": "extractive_qa", "max_length": QA_MAX_LENGTH, "options": {"doc_stride": QA_DOC_STRIDE},
                      "data": {"kind": "squad_json", "path": str(data / "squad"),
                               "train": "dev-v1.1.json[0:38]", "dev": "dev-v1.1.json[38:]"}}}


QA_SPLIT = ("SQuAD v1.1 dev-v1.1.json split by article, never by question: train on the 8,582 questions of "
            "articles 0-37, evaluate on the 1,988 of articles 38-47 (a seeded random subset of them when the "
            "profile caps max_eval_examples); F1/EM x100 with the official normalisation")


# ---- GLUE, for the multi-task model ------------------------------------------------------------------
def glue_task_defs(data: Path) -> dict[str, dict[str, Any]]:
    """SST-2, MRPC, RTE and STS-B from the GLUE TSVs in ``data/glue`` (none when that folder is absent)."""
    glue = data / "glue"
    if not glue.is_dir():
        print(f"GLUE: {glue} not found; the multi-task model trains without its GLUE tasks")
        return {}
    pairs = {"sst2": ["negative", "positive"], "mrpc": ["not_equivalent", "equivalent"],
             "rte": ["entailment", "not_entailment"]}
    defs = {name: {"type": "classification", "num_labels": 2, "labels": labels,
                   "data": {"kind": "glue_tsv", "glue_task": name, "path": str(glue / _GLUE_DIRS[name])}}
            for name, labels in pairs.items()}
    defs["stsb"] = {"type": "regression", "data": {"kind": "glue_tsv", "glue_task": "stsb",
                                                   "path": str(glue / "STS-B")}}
    return defs


_GLUE_DIRS = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE"}


# ---- training --------------------------------------------------------------------------------------
def train(defs: dict[str, dict[str, Any]], profile: Profile, out: Path, adapters: bool) -> dict[str, Any]:
    """Train ``defs`` for ``profile.steps`` steps per task (round robin); the last evaluation's metrics
    and every evaluation's (``curve``)."""
    tasks = load_task_defs({"max_length": profile.max_length, "tasks": defs})
    steps = profile.steps * len(tasks)
    config = TrainConfig(model="minilm", adapter="pal", freeze_backbone=False, output_dir=str(out), epochs=1,
                         max_steps=steps, batch_size=profile.batch_size, lr=profile.lr,
                         adapter_lr=profile.adapter_lr, sampling="round_robin",
                         eval_every=max(1, math.ceil(steps / profile.evals)),
                         log_every=max(1, steps // 10), max_train_examples=profile.max_train_examples,
                         max_eval_examples=profile.max_eval_examples, seed=profile.seed)
    backbone, tokenizer = _backbone(profile)
    trainer = MultiTaskTrainer(config, tasks, backbone=backbone, tokenizer=tokenizer)
    if not adapters:
        drop_adapters(trainer)
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    evals = [e for e in read_jsonl(out / "log.jsonl") if e.get("kind") == "eval"]
    report = trainer.model.parameter_report()
    curve = [{"step": e["step"], "metrics": e["metrics"]} for e in evals]
    return {"metrics": evals[-1]["metrics"], "curve": curve, "steps": steps, "wall_s": round(wall, 1),
            "trainable_params": sum(p.numel() for p in trainer.trainable),
            "backbone_params": report.backbone, "tasks": list(tasks)}


def _backbone(profile: Profile) -> tuple[Any, Any]:
    """The packaged MiniLM and its tokenizer, or (``model="tiny"``) a random 2-layer BERT on its vocabulary."""
    backbone, tokenizer = load_backbone("minilm")
    if profile.model == "tiny":
        torch.manual_seed(profile.seed)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37)
        backbone = BertModel(config)
    return backbone, tokenizer


def run_parts(parts: list[str], profile: Profile, data: Path,
              save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train each part in turn; ``save(results so far)`` after each, so a killed run keeps its parts."""
    ner, qa, glue = ner_task_def(data), qa_task_def(data), glue_task_defs(data)
    plans = {"ner_single": (ner, False), "qa_single": (qa, False), "multi": ({**glue, **ner, **qa}, True)}
    results = {}
    for part in parts:
        defs, adapters = plans[part]
        if not defs:
            print(f"{part}: skipped (its task definition is not available yet)")
            continue
        with tempfile.TemporaryDirectory(prefix=f"ner_qa_{part}_") as out:
            print(f"== {part}: {sorted(defs)}, {profile.steps} steps per task")
            results[part] = train(defs, profile, Path(out), adapters)
            shutil.rmtree(out, ignore_errors=True)  # checkpoints and saved models are not results
        save(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_const", const="quick", dest="profile", default="default",
                        help="the CPU profile (see PROFILES)")
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="profile",
                        help="a tiny random model on synthetic data, 2 steps (tests)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--steps", type=int, help="override the profile's steps per task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--output", help="JSON file name (default: ner_qa_accuracy[_<profile>].json)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = args.profile
    profile = PROFILES[name]
    if args.steps:
        profile = Profile(**{**asdict(profile), "steps": args.steps})
    meta, out = run_metadata(), args.output or f"ner_qa_accuracy{'' if name == 'default' else '_' + name}.json"

    def save(results: dict[str, Any]) -> None:
        write_json(args.results_dir / out, {**meta, "profile": name, "settings": asdict(profile),
                                            "parts_done": list(results), "results": results, "table": rows(results),
                                            "seqeval_mode": "default (conlleval-compatible)",
                                            "squad_split": QA_SPLIT})

    with tempfile.TemporaryDirectory(prefix="ner_qa_smoke_data_") as synthetic:
        data = args.data_dir
        if name == "smoke":
            data = Path(synthetic)
            ner_smoke_data(data)
            qa_smoke_data(data)
        results = run_parts(args.parts, profile, data, save)
    print(format_table(HEADER, rows(results)))
    print(f"wrote {args.results_dir / out}")


if __name__ == "__main__":
    main()
