"""Every benchmark script runs end to end in its tiny mode (no timing is asserted).

One row per script: (script, arguments, check). Each script writes into a temporary results
folder given by ``--results-dir``; ``check(results_dir)`` asserts on what it wrote. Add a row for
a new script (helpers: keep each row a few seconds; use the script's tiny or smoke mode).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def check_glue_accuracy(results: Path) -> None:
    summary = json.loads((results / "smoke.json").read_text())
    assert (results / "smoke.png").stat().st_size > 0
    assert set(summary["results"]) == {f"{c}__tasks=rte+stsb" for c in ("a_single_ft", "c_pal", "e_lora_frozen",
                                                                       "c_pal_kd", "c_pal_kd_mt",
                                                                       "c_uncertainty")}
    for name, r in summary["results"].items():
        assert set(r["final"]) == {"rte", "stsb"}, name
        assert 0.0 <= r["final"]["rte"]["accuracy"] <= 1.0
        assert set(r["final"]["stsb"]) == {"pearson", "spearman"}
        assert all(math.isfinite(v) or math.isnan(v) for v in r["best"]["stsb"].values())
    multiples = {n.split("__")[0]: r["parameter_multiple"] for n, r in summary["results"].items()}
    assert multiples["a_single_ft"] > 2.0 > multiples["c_pal"] > 1.0  # two tuned copies vs one shared
    kd = json.loads((results / "smoke" / "c_pal_kd__tasks=rte+stsb.json").read_text())
    assert {t: [r["seed"] for r in runs] for t, runs in kd["teachers"].items()} == {"rte": [42, 43, 44],
                                                                                   "stsb": [42]}
    start = "c-rte+stsb-seed42"  # recipe "multi": the teachers' (c) start, kept with save_pretrained
    assert sorted(p.name for p in (results / "cache" / "smoke").iterdir()) == sorted(
        [start] + [f"{t}-{f}seed{s}.safetensors" for f in ("", f"from-{start}-")
                   for t, s in (("rte", 42), ("rte", 43), ("rte", 44), ("stsb", 42))])
    mt = json.loads((results / "smoke" / "c_pal_kd_mt__tasks=rte+stsb.json").read_text())
    assert {t: [(r["recipe"], r["seed"]) for r in runs] for t, runs in mt["teachers"].items()} == {
        "rte": [("multi", 42), ("multi", 43), ("multi", 44)], "stsb": [("multi", 42)]}
    assert (results / "smoke" / "teachers" / f"{start}.json").is_file()
    weighted = json.loads((results / "smoke" / "c_uncertainty__tasks=rte+stsb.json").read_text())
    weights = [e["weight"] for e in weighted["runs"]["all"]["train_log"]]
    assert weights[0] == 1.0 and any(w != 1.0 for w in weights)  # exp(-s_t), s_t = 0 at the start, then learnt
    assert summary["loss_weights_plot"] == ["c_uncertainty__tasks=rte+stsb"]
    assert (results / "smoke_uncertainty.png").stat().st_size > 0
    assert set(summary["distillation"]) == {"c_pal_kd__tasks=rte+stsb", "c_pal_kd_mt__tasks=rte+stsb"}
    table = summary["distillation"]["c_pal_kd__tasks=rte+stsb"]["per_task"]
    for task in ("rte", "stsb"):  # the report's scores are the cached runs' own
        assert table[task]["(c)+KD"] == pytest.approx(100 * sum(kd["final"][task].values()) / len(kd["final"][task]))
        assert table[task]["(c)"] == pytest.approx(
            100 * sum(summary["results"]["c_pal__tasks=rte+stsb"]["final"][task].values())
            / len(summary["results"]["c_pal__tasks=rte+stsb"]["final"][task]))
        assert len(table[task]["teachers"]) == len(kd["teachers"][task])


def check_ner_qa_accuracy(results: Path) -> None:
    summary = json.loads((results / "ner_qa_accuracy_smoke.json").read_text())
    assert {"ner_single", "qa_single", "multi"} <= set(summary["results"])
    for part in ("ner_single", "multi"):
        assert set(summary["results"][part]["metrics"]["conll"]) == {"f1", "precision", "recall", "accuracy"}
    assert summary["table"][0][0] == "CoNLL-2003 dev entity F1"
    for part in ("qa_single", "multi"):
        assert set(summary["results"][part]["metrics"]["squad"]) == {"exact_match", "f1"}
    check_ner_qa_report(results, summary)


def _report(results: Path, *files: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ner_qa_report.py"), *files, "--results-dir",
                           str(results)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def check_ner_qa_report(results: Path, summary: dict) -> None:
    """The parts run as separate processes (one file each) give the table of the run that held them all."""
    def part_file(name: str, parts: tuple[str, ...], **settings) -> str:
        held = {**summary, "settings": {**summary["settings"], **settings},
                "results": {p: summary["results"][p] for p in parts}}
        (results / name).write_text(json.dumps(held))
        return name

    single, multi = part_file("single.json", ("ner_single", "qa_single")), part_file("multi.json", ("multi",))
    proc = _report(results, single, multi)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((results / "ner_qa_accuracy_report.json").read_text())
    assert report["sources"] == {"ner_single": single, "qa_single": single, "multi": multi}
    r = summary["results"]
    for line, (task, metric) in zip(report["table"], [("conll", "f1"), ("squad", "f1"), ("squad", "exact_match")],
                                    strict=True):
        alone = 100 * r[f"{'ner' if task == 'conll' else 'qa'}_single"]["metrics"][task][metric]
        together = 100 * r["multi"]["metrics"][task][metric]
        assert [float(x) for x in line[1:]] == pytest.approx([alone, together, together - alone], abs=0.006)
    tasks = len(r["multi"]["tasks"])
    assert report["curves"]["conll"]["multi"] == [[e["step"] // tasks, pytest.approx(100 * e["metrics"]["conll"]["f1"])]
                                                 for e in r["multi"]["curve"]]
    assert (results / report["plot"]).stat().st_size > 0
    unequal = part_file("unequal.json", ("multi",), steps=summary["settings"]["steps"] + 1)
    again = part_file("again.json", ("ner_single",))
    refusals = (((single, unequal), "different settings (steps="), ((single, again), "'ner_single' is in both"))
    for files, says in refusals:
        proc = _report(results, *files)
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]
    assert summary["table"][1][0].startswith("SQuAD F1, articles 38-47")


def check_overhead(results: Path) -> None:
    run = json.loads((results / "overhead_smoke.json").read_text())["runs"][0]["results"]
    assert run["pal"]["max_abs_diff_vs_bare"] == 0.0  # identity at initialisation
    assert 0 < run["lhuc"]["ops_per_adapted_layer"]["total"] < run["pal"]["ops_per_adapted_layer"]["total"]


def check_mixed_batch(results: Path) -> None:
    report = json.loads((results / "mixed_batch_smoke.json").read_text())
    assert set(report["results"]) == {"pal", "low_rank", "lhuc", "peft_lora"}
    assert all(r["T=8"]["ratio"]["median"] > 0 for r in report["results"].values()), report["results"]
    assert (results / "mixed_batch_smoke.png").stat().st_size > 0


def check_multitask_inference(results: Path) -> None:
    report = json.loads((results / "multitask_inference_smoke.json").read_text())
    assert report["results"]["ours"]["top_half"]["T=2"]["speedup"]["median"] > 0
    hub = report["results"]["adapterhub"]  # measured where its venv exists, else skipped with the reason
    assert set(hub) == {"skipped"} or "T=2" in hub["all"]


def check_memory(results: Path) -> None:
    report = json.loads((results / "memory_smoke.json").read_text())
    assert report["peak"]["tiny tuned"]["trainable_params"] > report["peak"]["tiny frozen"]["trainable_params"]
    assert all(r["adapter_grads_ok"] for r in report["peak"].values())
    assert 0 < report["disk"]["tiny"]["task_over_full"] < 1


def check_memory_breakdown(results: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModel

    from pal_adapters import add_pal

    report = json.loads((results / "memory_breakdown_smoke.json").read_text())
    rows = report["rows"]
    backbone = AutoModel.from_config(AutoConfig.for_model("bert", **report["shapes"]["tiny"]))
    model = add_pal(backbone, {"task": 2}, adapter="pal", freeze_backbone=True)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)  # adapter + head
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name in ("tiny frozen", "tiny frozen +ckpt", "tiny frozen drop0", "tiny frozen +ckpt drop0"):
        assert rows[name]["grads"] == trainable and rows[name]["adamw"] == 2 * trainable, name
    for suffix in ("", " +ckpt", " drop0", " +ckpt drop0"):
        assert rows[f"tiny tuned{suffix}"]["total"] > rows[f"tiny frozen{suffix}"]["total"], suffix
        assert rows[f"tiny frozen{suffix}"]["params"] == rows[f"tiny tuned{suffix}"]["params"], suffix
    attention = {name: r["saved"]["attention TxT"] for name, r in rows.items()}
    assert 0 <= attention["tiny tuned drop0"] < attention["tiny tuned"]
    assert attention["tiny frozen drop0"] < attention["tiny frozen"]
    assert rows["tiny tuned +ckpt"]["recompute_peak"] > 0 == rows["tiny tuned"]["recompute_peak"]
    assert (results / "memory_breakdown_smoke.png").stat().st_size > 0


def check_train_check(results: Path) -> None:
    report = json.loads((results / "train_check_smoke_cpu.json").read_text())
    assert report["fp32"]["went_down"] and report["bf16"]["went_down"] and report["matches"]


def check_export(results: Path) -> None:
    report = json.loads((results / "export_smoke.json").read_text())
    assert set(report["results"]) == {"one_task 1x8", "one_task 2x16", "all_tasks 1x8", "all_tasks 2x16"}
    assert all(r["max_abs_logit_diff"] < 1e-4 < r["ratio"]["median"] for r in report["results"].values())
    assert report["files"]["all_tasks"]["mb"] > report["files"]["one_task"]["mb"] > 0  # + 3 tasks' adapters


def check_top_layers(results: Path) -> None:
    report = json.loads((results / "top_layers_smoke.json").read_text())
    assert set(report["results"]) == {"top_layer", "top_attention"}
    for row in report["results"].values():  # the encoder runs once, so all tasks cost less than the loop
        assert row["speedup"]["median"] > 0 and row["params_per_task"] > 0 and row["speedup_bound"] > 1


def check_fsdp_memory(results: Path) -> None:
    report = json.loads((results / "fsdp_memory_smoke.json").read_text())
    rows, ratios = report["rows"], report["over_replicated"]
    for row in rows.values():  # exact bytes, parts adding up
        assert row["total"] == row["params"] + row["grads"] + row["optimizer"] > 0
    assert ratios["replicated"] == 1.0 and 0.45 < ratios["fsdp"] < ratios["fsdp_adapters_replicated"] < 1.0


def check_grad_sync(results: Path) -> None:
    report = json.loads((results / "grad_sync_smoke.json").read_text())
    assert report["processes"] == 2 and set(report["summary"]) == {"flat", "ddp"}
    assert all(len(v) == report["steps"] and min(v) > 0 for v in report["seconds_per_step"].values())
    assert report["ddp_over_flat"] == report["summary"]["ddp"]["median"] / report["summary"]["flat"]["median"]


SCRIPTS = [
    ("glue_accuracy.py", ["--smoke", "--tasks", "rte,stsb", "--configs", "a_single_ft", "c_pal", "e_lora_frozen",
                          "c_pal_kd", "c_pal_kd_mt", "c_uncertainty", "--teacher-cache", "{results}/cache"],
     check_glue_accuracy),
    ("ner_qa_accuracy.py", ["--smoke"], check_ner_qa_accuracy),
    ("overhead.py", ["--smoke", "--output", "overhead_smoke.json"], check_overhead),
    ("mixed_batch.py", ["--smoke"], check_mixed_batch),
    ("multitask_inference.py", ["--smoke"], check_multitask_inference),
    ("memory.py", ["--smoke"], check_memory),
    ("memory_breakdown.py", ["--smoke"], check_memory_breakdown),
    ("train_check.py", ["--smoke"], check_train_check),
    ("export.py", ["--smoke"], check_export),
    ("top_layers.py", ["--smoke"], check_top_layers),
    ("fsdp_memory.py", ["--smoke"], check_fsdp_memory),
    ("grad_sync.py", ["--smoke", "--steps", "4", "--warmup", "1"], check_grad_sync),
]


@pytest.mark.parametrize(("script", "args", "check"), SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_benchmark_script_runs_in_its_tiny_mode(script, args, check, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [a.format(results=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--results-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check(tmp_path)


def _teachers_module():
    if str(ROOT / "benchmarks") not in sys.path:  # the benchmarks import each other by bare name
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import glue_teachers

    return glue_teachers


def test_multi_recipe_teacher_starts_as_the_multitask_models_task():
    """A teacher of recipe "multi" is (c) fine-tuned: before step 0 its one-task model (a fresh base,
    its own freshly initialised PAL and head) must compute exactly (c)'s outputs for that task, the
    backbone tuned, PAL and head non-trivial."""
    from helpers import randomize_adapters, tiny_batch, tiny_model

    from pal_adapters import add_pal

    multi = add_pal(tiny_model("bert", seed=0), {"a": 2, "b": 3, "c": 1}, adapter="pal")
    randomize_adapters(multi)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in multi.named_parameters():
            if not name.startswith("backbone.pal_adapters."):  # tune the backbone and heads too
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    one = add_pal(tiny_model("bert", seed=0), {"b": 3}, adapter="pal")
    batch = tiny_batch()
    with torch.no_grad():
        before = one(**batch, task="b").logits
        _teachers_module()._copy_from(one, multi.state_dict())
        expected, got = multi.eval()(**batch, task="b").logits, one.eval()(**batch, task="b").logits
    assert not torch.allclose(before, expected, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_multi_recipe_refuses_a_start_without_the_task():
    from helpers import tiny_model

    from pal_adapters import add_pal

    multi = add_pal(tiny_model("bert"), {"a": 2}, adapter="pal")
    one = add_pal(tiny_model("bert"), {"b": 2}, adapter="pal")
    with pytest.raises(KeyError, match=r"lacks 10 .*pal_adapters\.b\."):
        _teachers_module()._copy_from(one, multi.state_dict())
