"""Save/load round trips with non-trivial weights, and every way a load can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fuzz_saves import rehash
from helpers import hidden, randomize_adapters, tiny_batch, tiny_model
from safetensors.torch import load_file, save_file

from pal_adapters import AdapterConfig, MultiTaskModel, TaskConfig, add_pal
from pal_adapters.io import AdapterLoadError, backbone_state, file_sha256
from pal_adapters.save_format import sealed

ADAPTER = AdapterConfig(kind="pal", lhuc=True, output_activation="gelu", hidden_size=8, num_heads=2)
TASKS = {"a": TaskConfig(num_labels=3), "b": TaskConfig(type="regression", pooling="mean"),
         "c": TaskConfig(type="token_classification", num_labels=4)}


def trained(freeze=True, arch="bert"):
    model = add_pal(tiny_model(arch), TASKS, adapter=ADAPTER, freeze_backbone=freeze)
    randomize_adapters(model)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.normal_(0, 0.5)
        if not freeze:  # stand-in for tuning: move the backbone away from its base weights
            for p in model.backbone.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def logits(model, tasks=("a", "b", "c")):
    batch = tiny_batch()
    return {t: model(**batch, task=t).logits for t in tasks}


@pytest.mark.parametrize("freeze", [True, False])
def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path, freeze):
    model = trained(freeze)
    model.save_pretrained(tmp_path / "m")
    files = sorted(str(p.relative_to(tmp_path / "m")) for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) for f in files)
    assert ("backbone.safetensors" in files) == (not freeze)
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m", backbone=tiny_model("bert")).eval()
    assert loaded.task_names == model.task_names and loaded.tasks == model.tasks
    for task, expected in logits(model).items():
        assert torch.equal(logits(loaded)[task], expected), task


@pytest.mark.parametrize("freeze", [True, False])
def test_save_task_then_load_task_into_a_fresh_model(tmp_path, freeze):
    model = trained(freeze)
    model.save_task(tmp_path / "task_c", "c")
    target = add_pal(tiny_model("bert"), {"other": 2}, adapter="lhuc")
    if not freeze:  # the task was trained with a tuned backbone: refuse to pair it with the base
        with pytest.raises(AdapterLoadError, match=r"trained with other backbone weights"):
            target.load_task(tmp_path / "task_c")
        assert target.task_names == ["other"]
        target.backbone.load_state_dict(backbone_state(model.backbone), strict=False)  # the same tuned backbone
    assert target.load_task(tmp_path / "task_c", name="c2") == "c2"
    assert torch.equal(logits(target.eval(), ["c2"])["c2"], logits(model, ["c"])["c"])
    assert target.bank["c2"].config == ADAPTER


def test_adapters_for_another_base_model_are_refused(tmp_path):
    model = trained()
    model.save_pretrained(tmp_path / "m")
    model.save_task(tmp_path / "t", "a")
    with pytest.raises(AdapterLoadError, match=r"pal_config.json was saved for another base model.*checksum"):
        MultiTaskModel.from_pretrained(tmp_path / "m", backbone=tiny_model("bert", seed=5))
    wider = add_pal(tiny_model("bert", hidden_size=48), {"x": 2})
    with pytest.raises(AdapterLoadError, match=r"task.json was saved for another base model.*hidden_size: saved 32, "
                                               r"this model 48"):
        wider.load_task(tmp_path / "t")
    other_type = add_pal(tiny_model("roberta"), {"x": 2})
    with pytest.raises(AdapterLoadError, match=r"model_type: saved 'bert', this model 'roberta'"):
        other_type.load_task(tmp_path / "t")
    assert wider.task_names == ["x"] and other_type.task_names == ["x"]


def rewrite(folder: Path, edit) -> None:
    """Edit a task's tensors and re-record the hash, so only the edit itself is wrong."""
    tensors = load_file(str(folder / "adapter.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "adapter.safetensors"))
    meta = json.loads((folder / "task.json").read_text())
    meta["sha256"]["adapter.safetensors"] = file_sha256(folder / "adapter.safetensors")
    (folder / "task.json").write_text(json.dumps(sealed(meta)))  # re-sealed: only the tensor edit is wrong


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("head.out.bias"), r"missing tensors \['head.out.bias'\]"),
        (lambda t: t.update({"adapter.extra": torch.zeros(2)}), r"unexpected tensors \['adapter.extra'\]"),
        (lambda t: t.update({"head.out.bias": torch.zeros(7)}), r"head.out.bias: saved \(7,\), expected \(4,\)"),
    ],
)
def test_tensor_mismatches_are_listed_and_nothing_is_half_loaded(tmp_path, edit, message):
    trained().save_task(tmp_path / "t", "c")
    rewrite(tmp_path / "t", edit)
    target = add_pal(tiny_model("bert"), {"x": 2})
    with pytest.raises(AdapterLoadError, match=r"adapter.safetensors does not fit this model: .*" + message):
        target.load_task(tmp_path / "t")
    assert target.task_names == ["x"] and list(target.bank.keys()) == ["x"]


def test_truncated_or_corrupted_files_are_reported_by_name(tmp_path):
    model = trained()
    model.save_pretrained(tmp_path / "m")
    tensors = tmp_path / "m" / "tasks" / "b" / "adapter.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    backbone = tiny_model("bert")
    with pytest.raises(AdapterLoadError, match=r"tasks/b/adapter.safetensors is corrupted or truncated"):
        MultiTaskModel.from_pretrained(tmp_path / "m", backbone=backbone)
    assert not hasattr(backbone, "pal_adapters")
    rehash(tmp_path / "m")  # hashes recorded for the truncated file: the reader notices
    with pytest.raises(AdapterLoadError, match=r"adapter.safetensors is not a readable safetensors file"):
        MultiTaskModel.from_pretrained(tmp_path / "m", backbone=backbone)
    (tmp_path / "m" / "pal_config.json").write_text('{"format": "pal_adap')
    with pytest.raises(AdapterLoadError, match=r"pal_config.json is not valid JSON"):
        MultiTaskModel.from_pretrained(tmp_path / "m", backbone=backbone)
    assert not hasattr(backbone, "pal_adapters")


def test_an_interrupted_save_leaves_the_previous_save_loadable(tmp_path, monkeypatch):
    model = trained()
    model.save_pretrained(tmp_path / "m")
    expected = logits(model)
    with torch.no_grad():
        model.heads["a"].out.bias.add_(1.0)

    import pal_adapters.saving as saving

    calls = {"n": 0}
    real = saving.write_tensors

    def dying(path, tensors):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-save")
        return real(path, tensors)

    monkeypatch.setattr(saving, "write_tensors", dying)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m", backbone=tiny_model("bert")).eval()
    for task, value in expected.items():
        assert torch.equal(logits(loaded)[task], value)


def test_lhuc_merges_into_the_backbone_for_one_task():
    model = add_pal(tiny_model("bert"), {"a": 2, "b": 2}, adapter=AdapterConfig(kind="lhuc", placement="serial"))
    randomize_adapters(model, std=1.0)
    batch = tiny_batch()
    with model.use_task("b"):
        adapted = hidden(model.backbone, batch)
    merged = model.merge_lhuc("b")
    assert not hasattr(merged, "pal_adapters") and not merged._forward_pre_hooks
    torch.testing.assert_close(hidden(merged, batch), adapted, rtol=1e-5, atol=1e-5)
    with model.use_task(None):
        bare = hidden(model.backbone, batch)
    assert (adapted - bare).abs().max() > 1e-2  # the model itself kept its adapters


def test_merge_refuses_what_cannot_be_merged():
    pal = add_pal(tiny_model("bert"), {"a": 2}, adapter=ADAPTER)
    with pytest.raises(ValueError, match=r"task 'a' uses kind='pal'.*cannot be merged"):
        pal.merge_lhuc("a")
    pre_ln = add_pal(tiny_model("modernbert"), {"a": 2}, adapter="lhuc")
    with pytest.raises(ValueError, match=r"cannot merge LHUC into 'modernbert': its layers are pre-LN"):
        pre_ln.merge_lhuc("a")


def _split_qkv(tensors: dict) -> None:
    """The layout saved before Q/K/V were fused: ``...query|key|value.weight|bias``."""
    for name in [n for n in tensors if ".qkv." in n]:
        stem, _, leaf = name.partition(".qkv.")
        for part, chunk in zip(("query", "key", "value"), tensors.pop(name).chunk(3), strict=True):
            tensors[f"{stem}.{part}.{leaf}"] = chunk.contiguous()


def test_saves_with_separate_query_key_value_load_into_the_fused_attention(tmp_path):
    model = trained()
    model.save_pretrained(tmp_path / "m")
    split = 0
    for folder in (tmp_path / "m" / "tasks").iterdir():
        tensors = load_file(str(folder / "adapter.safetensors"))
        _split_qkv(tensors)
        split += sum(".query." in n for n in tensors)
        save_file(tensors, str(folder / "adapter.safetensors"))
    rehash(tmp_path / "m")
    assert split > 0  # the edit really produced the old names
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m", backbone=tiny_model("bert")).eval()
    want, got = logits(model), logits(loaded)
    assert all(torch.equal(want[t], got[t]) for t in want)
    other = add_pal(tiny_model("bert"), {}, adapter=ADAPTER)
    other.load_task(tmp_path / "m" / "tasks" / "a")
    assert torch.equal(other.eval()(**tiny_batch(), task="a").logits, want["a"])
