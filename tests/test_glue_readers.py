"""The GLUE TSV readers against the real files in ../shared/data/glue (skipped when absent)."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pytest

from pal_adapters.training.readers import load_split, read_glue_tsv
from pal_adapters.training.taskdefs import load_task_defs

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/glue"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"GLUE data not found at {GLUE_DIR}")

# (glue task, folder, split, official rows, label counts with hub ids or None for regression)
OFFICIAL = [
    ("sst2", "SST-2", "train", 67349, None),
    ("sst2", "SST-2", "dev", 872, {0: 428, 1: 444}),
    ("mrpc", "MRPC", "train", 3668, {1: 2474, 0: 1194}),
    ("mrpc", "MRPC", "dev", 408, {1: 279, 0: 129}),
    ("rte", "RTE", "train", 2490, {0: 1249, 1: 1241}),  # entailment = 0
    ("rte", "RTE", "dev", 277, {0: 146, 1: 131}),
    ("cola", "CoLA", "train", 8551, {1: 6023, 0: 2528}),
    ("cola", "CoLA", "dev", 1043, {1: 721, 0: 322}),
    ("stsb", "STS-B", "train", 5749, None),
    ("stsb", "STS-B", "dev", 1500, None),
    ("wnli", "WNLI", "train", 635, {1: 312, 0: 323}),
    ("wnli", "WNLI", "dev", 71, {0: 40, 1: 31}),
    ("qnli", "QNLI", "dev", 5463, {0: 2702, 1: 2761}),  # entailment = 0
]
# Where the texts and the label sit in a raw line (CoLA has no header, MRPC starts with a BOM).
RAW_COLUMNS = {"sst2": ((0,), 1), "mrpc": ((3, 4), 0), "rte": ((1, 2), 3), "cola": ((3,), 1),
               "stsb": ((7, 8), 9), "wnli": ((1, 2), 3), "qnli": ((1, 2), 3)}
HAS_HEADER = {"cola": False}


@pytest.mark.parametrize(("task", "folder", "split", "rows", "counts"), OFFICIAL,
                         ids=[f"{t}-{s}" for t, _, s, _, _ in OFFICIAL])
def test_glue_file_has_official_rows_and_labels(task, folder, split, rows, counts):
    ds = read_glue_tsv(GLUE_DIR / folder / f"{split}.tsv", task)
    assert len(ds) == rows
    if counts is not None:
        assert dict(Counter(ds["label"])) == counts
    assert ("text_b" in ds.column_names) == (len(RAW_COLUMNS[task][0]) == 2)


def test_stsb_labels_are_floats_in_0_5():
    labels = list(read_glue_tsv(GLUE_DIR / "STS-B" / "dev.tsv", "stsb")["label"])
    assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
    assert statistics.mean(labels) == pytest.approx(2.36, abs=0.01)


@pytest.mark.parametrize("task", sorted(RAW_COLUMNS))
def test_first_row_equals_plain_tab_split(task):
    folder = {t: f for t, f, *_ in OFFICIAL}[task]
    path = GLUE_DIR / folder / "dev.tsv"
    lines = path.read_bytes().decode("utf-8").lstrip("\ufeff").split("\n")
    fields = lines[1 if HAS_HEADER.get(task, True) else 0].split("\t")
    text_idx, label_idx = RAW_COLUMNS[task]
    row = read_glue_tsv(path, task)[0]
    assert [row["text_a"], row.get("text_b")][: len(text_idx)] == [fields[i] for i in text_idx]
    raw_label = fields[label_idx]
    if task == "stsb":
        assert row["label"] == float(raw_label)
    elif task in ("rte", "qnli"):
        assert row["label"] == ["entailment", "not_entailment"].index(raw_label)
    else:
        assert row["label"] == int(raw_label)


def test_cola_dev_keeps_last_line_without_final_newline():
    path = GLUE_DIR / "CoLA" / "dev.tsv"
    raw = path.read_bytes()
    assert not raw.endswith(b"\n")
    last = raw.decode("utf-8").split("\n")[-1].split("\t")
    assert read_glue_tsv(path, "cola")[-1]["text_a"] == last[3]


def test_mrpc_bom_does_not_leak_into_columns():
    ds = read_glue_tsv(GLUE_DIR / "MRPC" / "train.tsv", "mrpc")
    assert not ds[0]["text_a"].startswith("\ufeff")


def test_example_config_loads_every_split():
    defs = load_task_defs(EXAMPLES / "glue.yaml", data_dir=GLUE_DIR)
    for name, task_def in defs.items():
        if task_def.eval_only:
            assert name == "qnli"
            with pytest.raises(ValueError, match="task 'qnli' has no train split"):
                load_split(task_def, "train")
        assert len(load_split(task_def, "dev")) == {t: r for t, _, s, r, _ in OFFICIAL if s == "dev"}[name]
