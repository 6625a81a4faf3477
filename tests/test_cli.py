"""The ``pal-adapters`` command end to end on the toy three-task problem: train -> eval -> predict -> inspect.

Every call is ``main([...])`` in-process; the base encoder is the toy BERT saved to a local folder
(``--model``), so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import toy_backbone, toy_tokenizer, write_toy_tasks
from transformers import AutoModel, AutoTokenizer

from pal_adapters import MultiTaskModel
from pal_adapters.cli import main
from pal_adapters.cli_run import parse_value
from pal_adapters.training.report import format_eval_table, read_jsonl

ADAPTER = {"kind": "pal", "output_activation": "gelu", "hidden_size": 8, "num_heads": 2, "dropout": 0.0}
TRAINING = {"batch_size": 16, "lr": 3e-3, "log_every": 1, "seed": 3, "eval_every": 100}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained toy run: the run file, the base folder, the output folder and train's stdout."""
    root = tmp_path_factory.mktemp("cli")
    base = root / "base"
    toy_backbone().save_pretrained(base)
    toy_tokenizer().save_pretrained(base)
    spec = write_toy_tasks(root / "data", n=48)
    spec["tasks"]["sentiment"]["labels"] = ["negative", "positive"]
    run_file = root / "run.yaml"
    run_file.write_text(yaml.safe_dump({"model": "minilm", "adapter": ADAPTER, "training": TRAINING, **spec}))
    out = root / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["train", str(run_file), "--model", str(base), "--output-dir", str(out), "--max-steps", "6",
                     "--set", "eval_every=3", "--set", "lr=2e-3"])
    assert code == 0
    return {"yaml": run_file, "base": base, "out": out, "stdout": stdout.getvalue()}


def call(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def saved_model(run, folder: Path) -> tuple[MultiTaskModel, object]:
    """The saved model rebuilt with the library (not the CLI): the independent reference."""
    model = MultiTaskModel.from_pretrained(folder, backbone=AutoModel.from_pretrained(run["base"]))
    return model.eval(), AutoTokenizer.from_pretrained(run["base"])


def best_eval(run) -> dict:
    evals = [r for r in read_jsonl(run["out"] / "log.jsonl") if r["kind"] == "eval"]
    return max(evals, key=lambda r: r["score"])


# ---- train -------------------------------------------------------------------------------------
def test_train_overrides_reach_the_run_and_outputs_are_written(run):
    records = read_jsonl(run["out"] / "log.jsonl")
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]  # --set eval_every=3
    assert max(r["step"] for r in records if r["kind"] == "train") == 6  # --max-steps 6
    assert max(r["lr"] for r in records if r["kind"] == "train") == pytest.approx(2e-3)  # --set lr=2e-3
    for name in ("best", "last", "checkpoint", "curves.png"):
        assert (run["out"] / name).exists()


def test_train_prints_the_parameter_report_and_the_best_metrics(run):
    text = run["stdout"]
    model, _ = saved_model(run, run["out"] / "best")
    assert str(model.parameter_report()) in text
    assert format_eval_table(best_eval(run)["metrics"]) in text
    assert str(run["out"]) in text


@pytest.mark.parametrize("text, value", [("3", 3), ("1e-3", 1e-3), ("2.5e-5", 2.5e-5), ("true", True),
                                         ("null", None), ("adamax", "adamax"), ("{a: 1.0}", {"a": 1.0})])
def test_set_values_are_parsed_as_yaml_with_exponent_floats(text, value):
    assert parse_value(text) == value


# ---- eval --------------------------------------------------------------------------------------
def test_eval_reproduces_the_best_dev_metrics_of_training(run, capsys):
    code, out, _ = call(capsys, "eval", run["out"] / "best", run["yaml"], "--model", run["base"], "--json")
    assert code == 0
    results = json.loads(out)
    expected = best_eval(run)["metrics"]
    assert set(results) == set(expected) == {"sentiment", "animal", "length"}
    for task, metrics in expected.items():
        assert results[task] == pytest.approx(metrics, rel=1e-4, abs=1e-6)


def test_eval_table_for_chosen_tasks(run, capsys):
    code, out, _ = call(capsys, "eval", run["out"] / "best", run["yaml"], "--model", run["base"],
                        "--tasks", "length,animal", "--batch-size", "5")
    assert code == 0
    rows = [line.split()[0] for line in out.strip().splitlines()[2:]]
    assert rows == ["length", "animal"]


# ---- predict -----------------------------------------------------------------------------------
def test_predict_one_text_matches_the_library(run, capsys):
    folder = run["out"] / "last"
    code, out, _ = call(capsys, "predict", folder, "--task", "sentiment", "the movie was very good")
    assert code == 0
    line = json.loads(out)
    assert line["text"] == "the movie was very good"
    model, tokenizer = saved_model(run, folder)
    inputs = tokenizer(["the movie was very good"], return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs, task="sentiment").logits.softmax(-1)
    got = line["predictions"]["sentiment"]
    assert got["probabilities"] == pytest.approx(dict(zip(["negative", "positive"], probs[0].tolist(), strict=True)),
                                                 abs=1e-5)
    assert got["label"] == ["negative", "positive"][int(probs.argmax())]


def test_predict_file_all_tasks_agrees_with_single_task_runs(run, capsys, tmp_path):
    rows = [{"id": 1, "text": "a cat sat"}, {"id": 2, "text": "the dog was bad"},
            {"id": 3, "text": "good good plot is very fine not awful"}]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    folder = run["out"] / "last"
    code, out, _ = call(capsys, "predict", folder, "--input", path, "--batch-size", "2")
    assert code == 0
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [x["id"] for x in lines] == [1, 2, 3]
    assert all(set(x["predictions"]) == {"sentiment", "animal", "length"} for x in lines)
    assert isinstance(lines[0]["predictions"]["length"]["score"], float)
    assert set(lines[0]["predictions"]["animal"]["probabilities"]) == {"0", "1"}  # no label names: class ids
    _, one, _ = call(capsys, "predict", folder, "--task", "length", "--input", path)
    for many, single in zip(lines, map(json.loads, one.strip().splitlines()), strict=True):
        assert many["predictions"]["length"]["score"] == pytest.approx(single["predictions"]["length"]["score"],
                                                                       abs=1e-5)


def test_a_saved_task_records_that_it_reads_one_text_and_predict_refuses_a_pair_or_a_blank(run, capsys):
    folder = run["out"] / "last"
    model, _ = saved_model(run, folder)
    assert {t.inputs for t in model.tasks.values()} == {"text"}  # from the data's one text column
    code, out, err = call(capsys, "predict", folder, "the dog", "was bad")
    assert code == 2 and out == ""
    assert "no task of this model can read these inputs" in err and "reads one text ('text')" in err
    assert "this input is a text pair ('text' and 'text_b')" in err
    code, _, err = call(capsys, "predict", folder, "--task", "sentiment", "the dog", "was bad")
    assert code == 2 and "task 'sentiment' cannot read these inputs" in err
    for blank in ("", "   "):
        code, out, err = call(capsys, "predict", folder, blank)
        assert code == 2 and out == "" and "field 'text' is empty" in err


# ---- inspect -----------------------------------------------------------------------------------
def test_inspect_model_counts_match_the_loaded_model(run, capsys):
    folder = run["out"] / "best"
    code, out, _ = call(capsys, "inspect", folder, "--json")
    assert code == 0
    info = json.loads(out)
    model, _ = saved_model(run, folder)
    report = model.parameter_report()
    assert info["kind"] == "model" and info["backbone_tuned"] is True
    assert info["backbone_parameters"] == report.backbone
    assert {t["name"]: t["parameters"] for t in info["tasks"]} == {
        name: {"adapter": sum(p.numel() for p in model.bank[name].parameters()),
               "head": sum(p.numel() for p in model.heads[name].parameters())} for name in model.task_names}
    assert info["adapter_parameters"] == sum(report.adapters.values())
    assert info["base"]["hidden_size"] == 32 and info["base"]["num_layers"] == 2
    assert info["base"]["checksum"] == model.base_fingerprint["checksum"][:12]
    sentiment = next(t for t in info["tasks"] if t["name"] == "sentiment")
    assert sentiment["labels"] == ["negative", "positive"]
    assert sentiment["adapter"] == {"method": "pal", "lhuc": False, "placement": "parallel", "layers": [0, 1],
                                    "d_s": 8, "num_heads": 2}


def test_inspect_task_folder_as_text(run, capsys):
    code, out, _ = call(capsys, "inspect", run["out"] / "best" / "tasks" / "length")
    assert code == 0
    assert out.startswith("saved task:")
    assert "regression" in out and "sentiment" not in out and "tuned" in out
    assert "integrity: ok" in out


@pytest.mark.parametrize("damaged", ["backbone.safetensors", "tasks/animal/adapter.safetensors"])
def test_inspect_reports_a_flipped_byte_and_exits_1(run, capsys, tmp_path, damaged):
    folder = tmp_path / "flipped"
    shutil.copytree(run["out"] / "best", folder)
    path = folder / damaged
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a tensor byte: the file still parses, only its hash can tell
    path.write_bytes(bytes(data))
    code, out, _ = call(capsys, "inspect", folder, "--json")
    info = json.loads(out)
    assert code == 1 and str(path) in info["integrity"] and "sha256" in info["integrity"]
    assert call(capsys, "inspect", run["out"] / "best", "--json")[0] == 0


# ---- errors ------------------------------------------------------------------------------------
def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_unknown_set_key_names_it_and_the_valid_fields(run, capsys):
    code, _, err = call(capsys, "train", run["yaml"], "--set", "learning_rat=1e-3")
    assert_one_line_error(code, err, "learning_rat", "valid fields", "lr")


def test_missing_run_file_is_named(tmp_path, capsys):
    code, _, err = call(capsys, "train", tmp_path / "nope.yaml")
    assert_one_line_error(code, err, "nope.yaml")


def test_corrupted_task_file_is_named_by_every_command(run, capsys, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(run["out"] / "last", folder)
    task_json = folder / "tasks" / "animal" / "task.json"
    task_json.write_text(task_json.read_text()[:40])
    for argv in (("inspect", folder), ("predict", folder, "a cat"),
                 ("eval", folder, run["yaml"], "--model", run["base"])):
        code, _, err = call(capsys, *argv)
        assert_one_line_error(code, err, str(task_json), "not valid JSON")


def test_truncated_tensor_file_and_unknown_task_are_reported(run, capsys, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(run["out"] / "last", folder)
    tensors = folder / "tasks" / "length" / "adapter.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    code, _, err = call(capsys, "predict", folder, "a cat")
    assert_one_line_error(code, err, str(tensors), "corrupted")
    code, _, err = call(capsys, "predict", run["out"] / "last", "--task", "sentimentt", "a cat")
    assert_one_line_error(code, err, "sentimentt", "sentiment")
