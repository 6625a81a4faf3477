"""Task definitions, generic readers, hub column mapping, tokenisation and length-aware batching."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import datasets
import pytest
import torch
import transformers
import yaml

from pal_adapters.config import TaskConfig
from pal_adapters.training import data as data_mod
from pal_adapters.training.data import DynamicPaddingCollator, LengthGroupedBatchSampler, make_dataloader, tokenize
from pal_adapters.training.readers import load_split, make_label_converter, map_columns, read_tsv_columns
from pal_adapters.training.taskdefs import DataSource, TaskDef, load_task_defs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WORDS = "the a cat dog sat on mat good bad movie is was not very".split()


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return transformers.BertTokenizer(vocab=vocab)


def _task(tmp_path: Path, kind: str, **data) -> TaskDef:
    spec = {"type": "classification", "num_labels": 2, "labels": ["neg", "pos"], "metrics": ["accuracy"],
            "data": {"kind": kind, "path": str(tmp_path), **data}}
    return load_task_defs({"tasks": {"toy": spec}})["toy"]


# ---- task definitions -----------------------------------------------------------------------------

def test_example_glue_yaml_loads_with_metrics_and_hub_label_ids():
    defs = load_task_defs(EXAMPLES / "glue.yaml")
    assert list(defs) == ["sst2", "mrpc", "rte", "cola", "stsb", "wnli", "qnli"]
    assert defs["mrpc"].metrics == ("f1", "accuracy") and defs["cola"].metrics == ("mcc",)
    assert defs["stsb"].metrics == ("pearson", "spearman") and defs["stsb"].task.num_labels == 1
    assert defs["rte"].label_map == {"entailment": 0, "not_entailment": 1}
    assert defs["qnli"].eval_only and not any(d.eval_only for n, d in defs.items() if n != "qnli")
    assert Path(defs["rte"].data.path) == glue_path_beside(EXAMPLES, "RTE")


def glue_path_beside(examples: Path, folder: str) -> Path:
    """Where ``examples/glue.yaml``'s ``data_dir: ../../shared/data/glue`` puts ``folder``: in the
    ``shared`` folder beside the checkout as it is named there, a symlink not followed (a resolved
    path would differ from the library's whenever ``../shared`` is a symlink)."""
    return Path(os.path.normpath(examples.parent.parent / "shared" / "data" / "glue" / folder))


def test_example_glue_yaml_paths_when_the_shared_folder_beside_the_checkout_is_a_symlink(tmp_path):
    tmp_path = tmp_path.resolve()  # the symlink under test is the only one on the way
    (tmp_path / "checkout" / "examples").mkdir(parents=True)
    (tmp_path / "checkout" / "examples" / "glue.yaml").write_text((EXAMPLES / "glue.yaml").read_text())
    (tmp_path / "elsewhere" / "data" / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "shared").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    defs = load_task_defs(tmp_path / "checkout" / "examples" / "glue.yaml")
    path = Path(defs["rte"].data.path)
    assert path == glue_path_beside(tmp_path / "checkout" / "examples", "RTE") == tmp_path / "shared/data/glue/RTE"
    assert path.is_dir() and path.resolve() == (tmp_path / "elsewhere" / "data" / "glue" / "RTE").resolve()


def test_data_dir_override_moves_every_local_path(tmp_path):
    defs = load_task_defs(EXAMPLES / "glue.yaml", data_dir=tmp_path)
    assert Path(defs["cola"].data.path) == tmp_path / "CoLA"


def test_hub_yaml_maps_glue_columns_and_validation_split():
    defs = load_task_defs(EXAMPLES / "glue_hub.yaml")
    assert defs["qnli"].data.text_columns == ("question", "sentence")
    assert defs["mrpc"].data.text_columns == ("sentence1", "sentence2")
    assert {d.data.dev for d in defs.values()} == {"validation"} and not defs["qnli"].eval_only


def test_task_def_round_trips_through_yaml():
    defs = load_task_defs(EXAMPLES / "glue.yaml")
    text = yaml.safe_dump({"tasks": {n: d.to_dict() for n, d in defs.items()}})
    assert load_task_defs(yaml.safe_load(text)) == defs


def test_glue_metrics_default_to_the_official_ones():
    spec = {"type": "classification", "num_labels": 2, "data": {"kind": "glue_tsv", "glue_task": "mrpc"}}
    assert load_task_defs({"tasks": {"mrpc": spec}})["mrpc"].metrics == ("f1", "accuracy")


@pytest.mark.parametrize(("spec", "match"), [
    ({"typo": 1}, r"task 'bad': unknown field\(s\) \['typo'\]; valid fields: .*'metrics'"),
    ({"data": {"kind": "parquet", "path": "x"}}, r"task 'bad', data: kind='parquet' is not valid; .*'jsonl'"),
    ({"data": {"kind": "glue_tsv", "glue_task": "squad"}}, r"glue_task='squad' is not valid; .*'rte'"),
    ({"data": {"kind": "csv", "path": "x", "colums": ["a"]}}, r"data: unknown field\(s\) \['colums'\]"),
    ({"data": {"kind": "csv", "path": "x"}}, r"text_columns=\(\) must list one or two"),
    ({"metrics": ["pearson"]}, r"task 'bad': metric='pearson' does not fit type='classification'"),
    ({"metrics": ["bleu"]}, r"metric='bleu' does not fit type='classification'; choose from .*'mcc'"),
    ({"metrics": "accuracy"}, r"metrics='accuracy' must be a list"),
    ({"type": "regresion"}, r"type='regresion' is not valid; choose one of .*'regression'"),
    ({"label_map": {"yes": 2}}, r"label_map entries \{'yes': 2\} are invalid; .* 0\.\.1"),
    ({"max_length": 0}, r"max_length=0 must be an integer >= 2"),
    ({"num_labels": 3, "data": {"kind": "glue_tsv", "glue_task": "rte"}}, r"does not fit GLUE RTE"),
    ({"data": None}, r"task 'bad': data=None must be a mapping"),
])
def test_bad_task_definitions_name_task_field_value_and_choices(spec, match):
    base = {"type": "classification", "num_labels": 2, "metrics": ["accuracy"],
            "data": {"kind": "csv", "path": "x", "text_columns": ["text"]}}
    with pytest.raises(ValueError, match=match):
        load_task_defs({"tasks": {"bad": base | spec}})


def test_bad_top_level_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['task'\]; valid fields: \['data_dir'"):
        load_task_defs({"task": {}})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_task_defs(tmp_path / "nope.yaml")


def test_data_source_defaults_per_kind():
    assert DataSource(kind="hub", path="x", text_columns=("t",)).dev == "validation"
    assert DataSource(kind="glue_tsv", glue_task="rte").path == "RTE"
    assert DataSource(kind="csv", path="d", text_columns=["t"]).text_columns == ("t",)


# ---- generic readers and labels -------------------------------------------------------------------

def test_csv_reader_handles_quotes_bom_and_label_names(tmp_path):
    (tmp_path / "train.csv").write_text('\ufefftext,label\n"good, very good",pos\nbad movie,neg\n')
    ds = load_split(_task(tmp_path, "csv", text_columns=["text"]), "train")
    assert ds.column_names == ["text_a", "label"]
    assert ds.to_dict() == {"text_a": ["good, very good", "bad movie"], "label": [1, 0]}


def test_tsv_reader_keeps_bare_quotes_and_pairs(tmp_path):
    (tmp_path / "dev.tsv").write_text('a\tb\ty\n"the cat\tsat "on\t1\nx\ty\t0')  # no final newline
    ds = load_split(_task(tmp_path, "tsv", text_columns=["a", "b"], label_column="y"), "dev")
    assert ds.to_dict() == {"text_a": ['"the cat', "x"], "text_b": ['sat "on', "y"], "label": [1, 0]}


def test_tsv_reader_names_line_with_wrong_field_count(tmp_path):
    (tmp_path / "f.tsv").write_text("a\tb\n1\t2\n3\n")
    with pytest.raises(ValueError, match=r"line 3: 1 tab-separated fields, expected 2 \['a', 'b'\]"):
        read_tsv_columns(tmp_path / "f.tsv")
    with pytest.raises(ValueError, match=r"line 3: 1 tab-separated fields"):  # header-less: no header line
        read_tsv_columns(tmp_path / "f.tsv", names=["x", "y"])
    assert read_tsv_columns(tmp_path / "f.tsv", names=["x", "y"], skip_malformed=True) == {
        "x": ["a", "1"], "y": ["b", "2"]}


def test_jsonl_reader_with_explicit_split_file_name(tmp_path):
    rows = [{"q": "the cat", "p": "a dog", "gold": "pos"}, {"q": "mat", "p": "sat", "gold": "0"}]
    (tmp_path / "my_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = _task(tmp_path, "jsonl", text_columns=["q", "p"], label_column="gold", train="my_train.jsonl")
    assert load_split(task, "train")["label"] == [1, 0]
    mixed = '{"q": "a", "p": "b", "gold": 1}\n{"q": "c", "p": "d", "gold": "pos"}'
    (tmp_path / "dev.jsonl").write_text(mixed)
    with pytest.raises(ValueError, match="dev.jsonl'. a column mixes value types"):
        load_split(task, "dev")
    (tmp_path / "dev.jsonl").write_text('{"q": "a", "p": "b", "gold": 1}\n{"q": "c"')
    with pytest.raises(ValueError, match="dev.jsonl', line 2: invalid JSON"):
        load_split(task, "dev")


def test_missing_file_column_and_label_errors(tmp_path):
    task = _task(tmp_path, "csv", text_columns=["text"])
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'train.csv'}"):
        load_split(task, "train")
    (tmp_path / "train.csv").write_text("sentence,label\nbad,neg\n")
    with pytest.raises(ValueError, match=r"column 'text' not found; available columns: \['sentence', 'label"):
        load_split(task, "train")
    (tmp_path / "dev.csv").write_text("text,label\nbad,neg\ngood,positive\n")
    with pytest.raises(ValueError, match=r"row 1: label 'positive' is not in the label map; known labels: "
                                         r"\['neg', 'pos'\]"):
        load_split(task, "dev")
    with pytest.raises(ValueError, match="split='test' is not valid"):
        load_split(task, "test")


def test_label_converters():
    to_id = make_label_converter(TaskConfig(num_labels=3), {"a": 0})
    assert [to_id("a"), to_id("2"), to_id(1)] == [0, 2, 1]
    with pytest.raises(ValueError, match=r"label 3 is not a class id in 0\.\.2"):
        to_id(3)
    assert make_label_converter(TaskConfig(type="regression"), {})("3.800") == 3.8
    multi = TaskConfig(type="multi_label", num_labels=3)
    assert make_label_converter(multi, {"x": 0, "z": 2})("x, z") == [1.0, 0.0, 1.0]
    ranking = make_label_converter(TaskConfig(type="ranking", num_candidates=2), {})
    assert [ranking("1"), ranking(0), ranking("true")] == [1, 0, 1]
    with pytest.raises(ValueError, match="label '2' is not a relevance label"):
        ranking("2")


# ---- hub column mapping ---------------------------------------------------------------------------

def _hub_rte() -> datasets.Dataset:
    text = datasets.Value("string")
    features = datasets.Features({"sentence1": text, "sentence2": text, "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    return datasets.Dataset.from_dict({"sentence1": ["p1", "p2"], "sentence2": ["h1", "h2"], "label": [0, 1],
                                       "idx": [0, 1]}, features=features)


def test_hub_columns_map_onto_text_a_text_b_label():
    convert = make_label_converter(TaskConfig(), {"entailment": 0, "not_entailment": 1})
    ds = map_columns(_hub_rte(), ("sentence1", "sentence2"), "label", convert)
    assert ds.to_dict() == {"text_a": ["p1", "p2"], "text_b": ["h1", "h2"], "label": [0, 1]}


def test_hub_class_label_ids_follow_the_task_label_map():
    convert = make_label_converter(TaskConfig(), {"not_entailment": 0, "entailment": 1})
    assert map_columns(_hub_rte(), ("sentence1", "sentence2"), "label", convert)["label"] == [1, 0]


def test_hub_split_goes_through_load_dataset(monkeypatch):
    calls = []
    monkeypatch.setattr(data_mod.datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or _hub_rte())
    task = load_task_defs(EXAMPLES / "glue_hub.yaml")["rte"]
    ds = load_split(task, "dev")
    assert calls == [(("nyu-mll/glue", "rte"), {"split": "validation", "cache_dir": None})]
    assert ds.column_names == ["text_a", "text_b", "label"] and ds["label"] == [0, 1]


# ---- tokenisation and batching --------------------------------------------------------------------

def _toy_dataset(n: int = 200, labels: str = "int") -> datasets.Dataset:
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)]
    label = [rng.randint(0, 1) if labels == "int" else rng.uniform(0, 5) for _ in range(n)]
    return datasets.Dataset.from_dict({"text_a": texts, "text_b": texts[::-1], "label": label})


def test_tokenize_truncates_keeps_labels_and_lengths(tokenizer):
    ds = _toy_dataset(labels="float")
    tok = tokenize(ds, tokenizer, max_length=16)
    assert set(tok.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}
    assert max(tok["length"]) == 16 and tok["labels"] == ds["label"]
    assert tok[0]["input_ids"][0] == tokenizer.cls_token_id


def test_tokenize_cache_dir_is_reused(tokenizer, tmp_path):
    first = tokenize(_toy_dataset(), tokenizer, 16, cache_dir=tmp_path)
    second = tokenize(_toy_dataset(), tokenizer, 16, cache_dir=tmp_path)
    other = tokenize(_toy_dataset(), tokenizer, 12, cache_dir=tmp_path)
    assert first.cache_files == second.cache_files and len(list(tmp_path.glob("*.arrow"))) == 2
    assert first._fingerprint == second._fingerprint != other._fingerprint


def test_sampler_yields_every_index_once_per_epoch():
    lengths = [random.Random(1).randint(1, 100) for _ in range(1003)]
    sampler = LengthGroupedBatchSampler(lengths, 16, mega_batch_mult=8, seed=3)
    for _ in range(2):
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(1003)) and len(batches) == len(sampler)
    dropped = LengthGroupedBatchSampler(lengths, 16, drop_last=True)
    assert all(len(b) == 16 for b in dropped) and len(list(dropped)) == len(dropped) == 1003 // 16


def test_sampler_batches_are_length_homogeneous_compared_to_random():
    rng = random.Random(2)
    lengths = [rng.randint(1, 128) for _ in range(2000)]

    def mean_spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    order = list(range(2000))
    rng.shuffle(order)
    random_batches = [order[i:i + 32] for i in range(0, 2000, 32)]
    grouped = list(LengthGroupedBatchSampler(lengths, 32, mega_batch_mult=20))
    assert mean_spread(grouped) < 0.2 * mean_spread(random_batches)


def test_sampler_is_seeded_and_changes_with_the_epoch():
    lengths = list(range(500))
    a, b = LengthGroupedBatchSampler(lengths, 8, seed=7), LengthGroupedBatchSampler(lengths, 8, seed=7)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b and list(a) != first_a
    a.set_epoch(0)
    assert list(a) == first_a and list(LengthGroupedBatchSampler(lengths, 8, seed=8)) != first_a
    fixed = LengthGroupedBatchSampler(lengths, 8, shuffle=False)
    assert list(fixed) == list(fixed)


@pytest.mark.parametrize(("labels", "dtype"), [("int", torch.int64), ("float", torch.float32)])
def test_collator_pads_to_longest_and_keeps_label_dtype(tokenizer, labels, dtype):
    tok = tokenize(_toy_dataset(8, labels), tokenizer, 64)
    batch = DynamicPaddingCollator(tokenizer)([tok[i] for i in range(4)])
    longest = max(tok["length"][:4])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (4, longest) and batch["labels"].dtype == dtype
    assert batch["attention_mask"].sum(1).tolist() == tok["length"][:4]


def test_dataloader_end_to_end(tokenizer):
    tok = tokenize(_toy_dataset(), tokenizer, 32)
    seen = []
    for batch in make_dataloader(tok, tokenizer, 16, seed=0):
        seen += batch["labels"].tolist()
        assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
    assert sorted(seen) == sorted(tok["labels"])
