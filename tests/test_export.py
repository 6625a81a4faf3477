"""ONNX export: ONNX Runtime gives PyTorch's logits (1e-4) for every kind, method, placement and
several encoder families; ``predict_rows`` on ONNX Runtime gives PyTorch's predictions; the
``export`` command and ``predict --backend onnx`` do the same from a saved model folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import randomize_adapters, tiny_batch, tiny_model, word_tokenizer
from transformers import BertTokenizerFast

from pal_adapters import TaskConfig, add_pal
from pal_adapters.cli import main
from pal_adapters.export import GraphCard, OnnxRunner, card_path, export_all_tasks, export_task
from pal_adapters.predict import predict_rows

pytest.importorskip("onnxruntime")

ATOL = 1e-4
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "who", "what", "is", "where", "##s"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
KINDS = {
    "sentiment": {"type": "classification", "num_labels": 3, "labels": ["neg", "neu", "pos"]},
    "topics": {"type": "multi_label", "num_labels": 3, "labels": ["x", "y", "z"]},
    "similarity": {"type": "regression", "adapter": {"kind": "low_rank", "layers": "top_half"}},
    "rank": {"type": "ranking", "num_candidates": 2},
    "ner": {"type": "token_classification", "num_labels": 5, "labels": TAGS},
    "qa": {"type": "extractive_qa"},
}


def batches(with_types: bool) -> list[dict[str, torch.Tensor]]:
    """Shapes other than the traced (2, 8): padded and unpadded rows, one row alone."""
    out = [tiny_batch(3, 11, seed=5, pad_rows=(0, 2)), tiny_batch(1, 5, seed=6, pad_rows=()),
           tiny_batch(4, 9, seed=7, pad_rows=())]
    if with_types:
        for b in out:
            b["token_type_ids"] = (torch.arange(b["input_ids"].shape[1]) > 3).long().expand_as(b["input_ids"])
    return out


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for task, logits in want.items():
        assert got[task].shape == logits.shape, task
        assert torch.allclose(got[task], logits, atol=ATOL, rtol=0), (task, (got[task] - logits).abs().max())


def non_trivial(model):
    """Adapters and heads far from identity, so an export that dropped them would be caught."""
    randomize_adapters(model, std=0.5)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in model.heads.values():
            head.out.weight.copy_(torch.randn(head.out.weight.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("vocab"), WORDS)


@pytest.fixture(scope="module")
def kinds_model():
    return non_trivial(add_pal(tiny_model("bert"), KINDS, adapter="pal"))  # 128 ids; the tokenizer uses 22


@pytest.fixture(scope="module")
def all_graph(kinds_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "all.onnx"
    export_all_tasks(kinds_model, path)
    return path


# ---- ONNX Runtime equals PyTorch -------------------------------------------------------------
def test_all_tasks_graph_gives_every_kinds_predict_all_logits(kinds_model, all_graph):
    runner = OnnxRunner(all_graph)
    assert runner.card.outputs == {t: t for t in KINDS} and runner.input_names[-1] == "token_type_ids"
    for batch in batches(with_types=True):
        assert_close(runner.task_logits(list(KINDS), batch), kinds_model.predict_all(list(KINDS), **batch))
        assert_close(runner.task_logits(["ner"], batch), {"ner": kinds_model(**batch, task="ner").logits})


@pytest.mark.parametrize("task", ["similarity", "ner", "qa"])  # (B,), (B, T, C) and masked (B, T, 2) outputs
def test_one_task_graph_gives_the_tasks_logits_and_holds_only_its_adapters(kinds_model, tmp_path, task):
    card = export_task(kinds_model, task, tmp_path / f"{task}.onnx")
    assert card.outputs == {task: "logits"} and list(card.tasks) == [task] and not card.all_tasks
    runner = OnnxRunner(tmp_path / f"{task}.onnx")
    for batch in batches(with_types=True):
        assert_close(runner.task_logits([task], batch), {task: kinds_model(**batch, task=task).logits})
    with pytest.raises(KeyError, match=task):
        runner.task_logits(["sentiment"], batches(True)[0])


CASES = [  # (family, adapter, placement): every method and placement, seven families
    ("bert", "pal", "parallel"),
    ("roberta", "low_rank", "serial"),
    ("distilbert", "lhuc", "parallel"),
    ("modernbert", "pal", "serial"),
    ("deberta-v2", "low_rank", "parallel"),
    ("albert", "lhuc", "serial"),
    ("electra", "pal_lhuc", "parallel"),
]


@pytest.mark.parametrize(("arch", "adapter", "placement"), CASES)
def test_onnx_runtime_equals_pytorch_for_method_placement_and_family(tmp_path, arch, adapter, placement):
    """Two tasks, one adapted in every layer and one in the top half only: the graph replicates
    the batch inside the first adapted layer, as predict_all does."""
    spec = {"kind": "pal" if adapter == "pal_lhuc" else adapter, "placement": placement,
            "lhuc": adapter == "pal_lhuc"}
    tasks = {"a": {"num_labels": 3, "adapter": spec},
             "b": {"type": "token_classification", "num_labels": 4, "adapter": {**spec, "layers": "top_half"}}}
    model = non_trivial(add_pal(tiny_model(arch), tasks))
    export_all_tasks(model, tmp_path / "all.onnx")
    runner = OnnxRunner(tmp_path / "all.onnx")
    for batch in batches(with_types="token_type_ids" in runner.input_names):
        assert_close(runner.task_logits(["a", "b"], batch), model.predict_all(["a", "b"], **batch))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PAL_TEST_DYNAMO") != "1",  # keeps this file near 30 s in CI
                    reason="torch.export of a tiny BERT takes 20-30 s on 2 cores; set PAL_TEST_DYNAMO=1")
def test_dynamo_exporter_gives_the_same_logits(kinds_model, tmp_path):
    card = export_task(kinds_model, "sentiment", tmp_path / "s.onnx", exporter="dynamo")
    assert card.exporter == "dynamo"
    runner = OnnxRunner(tmp_path / "s.onnx")
    for batch in batches(with_types=True):
        want = {"sentiment": kinds_model(**batch, task="sentiment").logits}
        assert_close(runner.task_logits(["sentiment"], batch), want)


# ---- predict on ONNX Runtime -----------------------------------------------------------------
ROWS = {
    "text": [{"text": "alpha bravo charlie delta echo"}, {"text": "golf hotels india"}, {"text": "kilo lima"}],
    "pair": [{"text": "alpha bravo", "text_b": "charlie delta echo"}, {"text": "golf", "text_b": "hotel india"}],
    "qa": [{"question": "who is where", "context": "alpha bravo charlie delta echo foxtrot golf hotel india"},
           {"question": "what is", "context": "juliet kilo lima alpha bravo charlie"}],
}


@pytest.mark.parametrize("form", list(ROWS))
def test_onnx_backend_predictions_equal_pytorch_predictions(kinds_model, all_graph, tok, form):
    runner = OnnxRunner(all_graph)
    want, want_skipped = predict_rows(kinds_model, tok, ROWS[form])
    got, skipped = runner.predict_rows(tok, ROWS[form])
    assert skipped == want_skipped and len(got[0]) >= 1
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True) or _close(got, want)


def _close(got, want) -> bool:
    """Equal labels, spans and answers; floats (probabilities, scores) within 1e-4."""
    if isinstance(want, float):
        return abs(got - want) <= ATOL
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want, strict=True))
    return got == want


# ---- the commands: export, predict --backend onnx ---------------------------------------------
@pytest.fixture(scope="module")
def saved(kinds_model, tok, tmp_path_factory):
    """The kinds model saved, and its base encoder with the tokenizer: what the commands load."""
    root = tmp_path_factory.mktemp("saved")
    tiny_model("bert").save_pretrained(root / "base")  # kinds_model's backbone (same seed)
    tok.save_pretrained(root / "base")
    kinds_model.save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def cli_graph(saved):
    out = saved / "graphs" / "all.onnx"
    assert main(["export", str(saved / "model"), "--model", str(saved / "base"), "--all-tasks", "-o", str(out)]) == 0
    return out


def call(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_command_writes_one_tasks_graph_and_card_and_nothing_else(saved, kinds_model, tmp_path, capsys):
    code, out, err = call(capsys, "export", saved / "model", "--model", saved / "base", "--task", "ner",
                          "--format", "onnx", "-o", tmp_path / "ner.onnx")
    assert code == 0 and "ner.json" in out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ner.json", "ner.onnx"]  # no temporaries left
    runner = OnnxRunner(tmp_path / "ner.onnx")
    assert runner.task_names == ["ner"] and runner.card.base_model == str(saved / "base")
    for batch in batches(with_types=True):  # the in-memory model: an independent reference
        assert_close(runner.task_logits(["ner"], batch), {"ner": kinds_model(**batch, task="ner").logits})


def test_export_all_tasks_command_gives_predict_all(cli_graph, kinds_model):
    runner = OnnxRunner(cli_graph)
    assert runner.card.all_tasks and runner.task_names == list(KINDS)
    batch = batches(with_types=True)[0]
    assert_close(runner.task_logits(list(KINDS), batch), kinds_model.predict_all(list(KINDS), **batch))


def test_predict_backend_onnx_prints_the_pytorch_lines(saved, cli_graph, tmp_path, capsys):
    rows = [*ROWS["text"], *ROWS["pair"], *ROWS["qa"], ROWS["text"][0]]  # three input forms, one run each
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, torch_out, _ = call(capsys, "predict", saved / "model", "--model", saved / "base",
                              "--input", tmp_path / "in.jsonl", "--batch-size", 2)
    assert code == 0
    code, onnx_out, _ = call(capsys, "predict", cli_graph, "--backend", "onnx",  # the tokenizer: the card's base
                             "--input", tmp_path / "in.jsonl", "--batch-size", 2)
    assert code == 0
    want, got = map(json.loads, torch_out.splitlines()), map(json.loads, onnx_out.splitlines())
    want, got = list(want), list(got)
    assert len(want) == len(rows) and {"ner", "qa", "similarity"} <= {t for w in want for t in w["predictions"]}
    assert _close(got, want)


def test_export_and_onnx_predict_errors_name_the_bad_value(saved, cli_graph, tmp_path, capsys, monkeypatch):
    export = ["export", saved / "model", "--model", saved / "base"]
    code, _, err = call(capsys, *export, "--task", "nope", "-o", tmp_path / "x.onnx")
    assert code == 2 and "'nope'" in err and "sentiment" in err
    code, _, err = call(capsys, *export, "--task", "ner", "-o", tmp_path / "ner.bin")
    assert code == 2 and "ner.bin" in err and ".onnx" in err
    for bad in (["--task", "ner", "--all-tasks"], ["--task", "ner", "--format", "tflite"]):
        with pytest.raises(SystemExit):
            call(capsys, *export, *bad, "-o", tmp_path / "x.onnx")
    code, _, err = call(capsys, "predict", saved / "model", "--backend", "onnx", "alpha")
    assert code == 2 and "is a folder" in err and "pal-adapters export" in err
    assert not list(tmp_path.iterdir())
    for module, argv in (("onnxruntime", ["predict", cli_graph, "--backend", "onnx", "alpha"]),
                         ("onnx", [*export, "--task", "ner", "-o", tmp_path / "ner.onnx"])):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        code, _, err = call(capsys, *argv)
        monkeypatch.delitem(sys.modules, module)
        assert code == 2 and err.count("\n") == 1 and module in err and 'pip install "pal-adapters[onnx]"' in err


# ---- the card, errors, imports ---------------------------------------------------------------
def test_card_beside_the_graph_holds_the_task_definitions(kinds_model, all_graph):
    card = GraphCard.read(card_path(all_graph))
    assert card.graph == "all.onnx" and card.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert {t: TaskConfig.from_dict(d) for t, d in card.tasks.items()} == kinds_model.tasks


def test_bad_exports_and_graphs_name_the_problem(kinds_model, all_graph, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_task(kinds_model, "ner", tmp_path / "ner.bin")
    with pytest.raises(KeyError, match="nope"):
        export_task(kinds_model, "nope", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="exporter='tvm'"):
        export_task(kinds_model, "ner", tmp_path / "x.onnx", exporter="tvm")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(all_graph.read_bytes())
    with pytest.raises(FileNotFoundError, match="task card"):
        OnnxRunner(lonely)
    batch = {**tiny_batch(2, 5), "position_ids": torch.zeros(2, 5, dtype=torch.long)}
    with pytest.raises(ValueError, match="position_ids"):
        OnnxRunner(all_graph).task_logits(["ner"], batch)


def test_export_help_imports_no_torch_and_the_core_no_onnx():
    code = ("import sys, contextlib, io\nfrom pal_adapters.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['export', '--help'])\nassert 'torch' not in sys.modules\n"
            "import pal_adapters.model, pal_adapters.predict, pal_adapters.export\n"
            "bad = [m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules]\nassert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
