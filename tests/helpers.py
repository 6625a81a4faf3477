"""Tiny random encoders of every supported family (hidden 32, 2 layers, 4 heads, intermediate 37)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 128
ARCHS = ["bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "distilbert", "albert", "modernbert", "mpnet"]
GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def tiny_config(arch: str, **overrides):
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if arch == "distilbert":
        kw = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37, vocab_size=VOCAB, dropout=0.0, attention_dropout=0.0)
    elif arch == "albert":
        kw.update(embedding_size=16)
    elif arch == "modernbert":
        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                  global_attn_every_n_layers=2, local_attention=4)
    elif arch == "deberta-v2":
        kw.update(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=16)
    kw.update(overrides)
    return AutoConfig.for_model(arch, **kw)


def tiny_model(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config(arch, **overrides)).eval()


def tiny_batch(batch: int = 3, length: int = 9, seed: int = 1, pad_rows: tuple[int, ...] = (1,)):
    """Token ids in [3, VOCAB) and a padding mask where ``pad_rows`` end with padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    ids[:, 0] = 1  # a CLS-like first token
    mask = torch.ones(batch, length, dtype=torch.long)
    for r in pad_rows:
        if r < batch:
            mask[r, length - 3:] = 0
            ids[r, length - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hidden(model, batch) -> torch.Tensor:
    return model(**batch).last_hidden_state


def randomize_adapters(model, std: float = 0.3, seed: int = 2) -> None:
    """Give every adapter parameter non-trivial values (so nothing passes by being identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pal_adapters." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"GLUE data not found at {GLUE_DIR}")


# ---- a toy multi-task problem for training-loop tests ------------------------------------------
WORDS = ["good", "bad", "fine", "awful", "movie", "plot", "the", "a", "is", "was", "very", "not", "cat", "dog", "sat"]


def toy_tokenizer():
    from transformers import BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    return BertTokenizer(vocab=vocab)


def write_toy_tasks(folder: Path, n: int = 96, seed: int = 0) -> dict:
    """JSONL train/dev files for three learnable tasks; returns a task-definition mapping."""
    import json
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    makers = {
        "sentiment": lambda s: int("good" in s.split() or "fine" in s.split()),
        "animal": lambda s: int("cat" in s.split() or "dog" in s.split()),
        "length": lambda s: float(len(s.split())) / 3.0,
    }
    for task, label in makers.items():
        for split, size in (("train", n), ("dev", n // 3)):
            lines = []
            for _ in range(size):
                sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
                lines.append(json.dumps({"text": sentence, "label": label(sentence)}))
            (folder / task).mkdir(exist_ok=True)
            (folder / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    spec = {"data": {"kind": "jsonl", "text_columns": ["text"], "label_column": "label"}}
    return {
        "max_length": 16,
        "tasks": {
            "sentiment": {"type": "classification", "num_labels": 2, "metrics": ["accuracy"],
                          "data": {**spec["data"], "path": str(folder / "sentiment")}},
            "animal": {"type": "classification", "num_labels": 2, "metrics": ["accuracy", "f1"],
                       "data": {**spec["data"], "path": str(folder / "animal")}},
            "length": {"type": "regression", "metrics": ["pearson"],
                       "data": {**spec["data"], "path": str(folder / "length")}},
        },
    }


def toy_backbone(seed: int = 0):
    return tiny_model("bert", seed=seed, vocab_size=len(WORDS) + 5)


def train_tiny_run(root: Path, tokenizer, tasks: dict, batch_size: int) -> Path:
    """Save a tiny BERT (sized to ``tokenizer``) and ``tokenizer`` under ``root/base``, write a run file
    for ``tasks`` and train it 2 steps through ``pal-adapters train`` into ``root/out``."""
    import yaml

    from pal_adapters.cli import main

    tiny_model("bert", vocab_size=len(tokenizer)).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    run_file = root / "run.yaml"
    run_file.write_text(yaml.safe_dump({"model": str(root / "base"), "adapter": "pal", "tasks": tasks,
                                        "training": {"batch_size": batch_size, "lr": 1e-3, "eval_every": 2}}))
    assert main(["train", str(run_file), "--output-dir", str(root / "out"), "--max-steps", "2"]) == 0
    return root


def word_tokenizer(folder: Path, words: list[str]):
    """A fast BERT tokenizer whose vocabulary is the five special tokens + ``words``, one id each
    (written to ``folder/vocab.txt``; transformers 5 ignores ``vocab_file=``)."""
    from transformers import BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizerFast(vocab=str(vocab))
