"""Run files and data files with mistakes: every error names the field (or task and file) and the bad value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from helpers import write_toy_tasks

from pal_adapters.cli import main
from pal_adapters.training.config import TrainConfig, read_run_file
from pal_adapters.training.readers import load_split
from pal_adapters.training.taskdefs import load_task_defs
from pal_adapters.validation import FieldTypeError, check_type, describe

# (training field, bad value as written in YAML, words the error must hold besides the field name)
BAD_VALUES = [
    ("lr", "fast", ["'fast'", "a number"]),
    ("lr", "'1e-3'", ["'1e-3'", "drop the quotes"]),
    ("adapter_lr", "[1, 2]", ["[1, 2]", "a number or null"]),
    ("mixed_batches", "maybe", ["'maybe'", "true or false"]),
    ("freeze_backbone", "1", ["=1", "true or false"]),
    ("epochs", "2.5", ["2.5", "an integer"]),
    ("batch_size", "true", ["True", "an integer"]),
    ("max_steps", "ten", ["'ten'", "an integer or null"]),
    ("sampling", "random", ["'random'", "choose one of", "'annealed'"]),
    ("optimizer", "sgd", ["'sgd'", "'adamw'"]),
    ("mixed_precision", "fp32", ["'fp32'", "'bf16' or null"]),
    ("loss_weighting", "3", ["=3", "'uncertainty'"]),
    ("task_weights", "{a: heavy}", ["task_weights['a']='heavy'", "a number"]),
    ("task_weights", "[1, 2]", ["[1, 2]", "a mapping"]),
    ("output_dir", "7", ["=7", "a string"]),
    ("distill", "sometimes", ["'sometimes'", "a mapping"]),
    ("adapter", "42", ["=42", "a string or a mapping"]),
    ("seed", "-1", ["-1", ">= 0"]),
    ("warmup_ratio", "1.5", ["1.5", "[0, 1)"]),
]


def write_run(tmp_path, field: str, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(f"tasks: {{}}\ntraining:\n  max_steps: 3\n  {field}: {text}\n")
    return path


@pytest.mark.parametrize(("field", "text", "words"), BAD_VALUES, ids=[f"{f}={t}" for f, t, _ in BAD_VALUES])
def test_bad_run_file_value_names_the_field_and_value(tmp_path, capsys, field, text, words):
    path = write_run(tmp_path, field, text)
    with pytest.raises(ValueError) as raised:
        read_run_file(path)
    assert f"{field}" in str(raised.value)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))
    # The CLI prints exactly that message as one line (no traceback, no generic "wrong type" wrapper).
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {raised.value}\n"


def test_training_section_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("tasks: {}\ntraining: [1, 2]\n")
    with pytest.raises(ValueError, match=r"'training:' must be a mapping"):
        read_run_file(path)


@pytest.mark.parametrize(("text", "value"), [("1e-4", 1e-4), ("1.0e-4", 1e-4), ("3E5", 3e5), ("2", 2)])
def test_exponent_floats_in_run_files_are_numbers(tmp_path, text, value):
    """YAML 1.1 reads ``1e-4`` as a string; run files read it as the float it means."""
    run = read_run_file(write_run(tmp_path, "lr", text))
    assert run.train.lr == value and type(run.train.lr) is type(value)


def test_int_is_a_valid_float_but_bool_is_not():
    assert TrainConfig(lr=1, max_grad_norm=0).lr == 1
    with pytest.raises(FieldTypeError, match=r"training field lr=True is not a number \(got bool\)"):
        TrainConfig(lr=True)


@pytest.mark.parametrize(("hint", "value", "message"), [
    (tuple[int, ...], [0, "1"], r"x\[1\]='1' is not an integer"),
    (tuple[int, str], [1], r"x=\[1\] is not a list of \[an integer, a string\]"),
    (list[Literal["a", "b"]], ["a", "c"], r"x\[1\]='c' is not valid; choose one of 'a', 'b'"),
    (str | tuple[int, ...], (1, 2.0), r"x\[1\]=2.0 is not an integer"),
    (dict[str, Any], {3: "v"}, r"x key=3 is not a string"),
    (int | None, "3", r"x='3' is not an integer or null \(got str\)"),
])
def test_nested_values_are_checked_item_by_item(hint, value, message):
    with pytest.raises(FieldTypeError, match=message):
        check_type("x", value, hint, "demo")


def test_valid_nested_values_pass_and_lists_stand_for_tuples():
    for hint, value in [(tuple[int, ...], [0, 1]), (tuple[int, ...], (0,)), (str | tuple[int, ...], "all"),
                        (dict[str, float], {"a": 1, "b": 0.5}), (Any, object()), (float | None, None)]:
        check_type("x", value, hint)
    assert describe(dict[str, float]) == "a mapping of string to number"


# ---- data files --------------------------------------------------------------------------------
@pytest.fixture
def toy_spec(tmp_path):
    return write_toy_tasks(tmp_path / "data", n=6)


def definition(spec: dict, task: str, **changes: Any):
    spec = json.loads(json.dumps(spec))
    spec["tasks"][task].update(changes)
    return load_task_defs(spec)[task]


def test_data_file_with_a_header_and_no_rows_names_task_and_file(tmp_path, toy_spec):
    folder = tmp_path / "csvdata"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n")
    d = definition(toy_spec, "animal", data={"kind": "csv", "path": str(folder), "text_columns": ["text"],
                                             "label_column": "label"})
    with pytest.raises(ValueError, match=r"task 'animal', train split: .*train\.csv: has no rows"):
        load_split(d, "train")


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_jsonl_file_names_task_and_file(toy_spec, content):
    d = definition(toy_spec, "sentiment")
    (Path(d.data.path) / "dev.jsonl").write_text(content)
    with pytest.raises(ValueError, match=r"task 'sentiment'.*dev\.jsonl.*has no rows"):
        load_split(d, "dev")


def test_missing_data_file_names_task_and_file(toy_spec):
    d = definition(toy_spec, "length")
    (Path(d.data.path) / "train.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"task 'length'.*train\.jsonl.*does not exist"):
        load_split(d, "train")


def test_missing_label_column_names_task_file_and_column(toy_spec):
    d = definition(toy_spec, "animal", data={**toy_spec["tasks"]["animal"]["data"], "label_column": "gold"})
    with pytest.raises(ValueError, match=r"task 'animal'.*train\.jsonl.*column 'gold' not found"):
        load_split(d, "train")


def test_label_not_in_the_label_map_names_task_file_row_and_label(toy_spec):
    d = definition(toy_spec, "sentiment", labels=["negative", "positive"])
    path = Path(d.data.path) / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["label"] = ["negative", "positive"][row["label"]]
    rows[2]["label"] = "neutral"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"task 'sentiment'.*train\.jsonl.*row 2: label 'neutral' is not in the "
                                         r"label map; known labels: \['negative', 'positive'\]"):
        load_split(d, "train")


def test_demo_run_files_pass_the_type_checks():
    """The strict types accept what the demo run files hold."""
    for demo in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")):
        data = yaml.safe_load(demo.read_text())
        if "training" in data:
            read_run_file(demo)


def test_unknown_distill_key_is_named_with_the_valid_ones(toy_spec, tmp_path):
    from helpers import toy_backbone, toy_tokenizer

    from pal_adapters.training.loop import MultiTaskTrainer

    config = TrainConfig(max_steps=1, output_dir=str(tmp_path / "run"), distill={"teacher": {"animal": ["x"]}})
    with pytest.raises(ValueError, match=r"unknown training field distill fields \['teacher'\]; valid fields: .*"
                                         r"'teachers'"):
        MultiTaskTrainer(config, load_task_defs(toy_spec), backbone=toy_backbone(), tokenizer=toy_tokenizer())
