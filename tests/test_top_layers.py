"""Task-specific layers on top of the encoder (PALs §3.2): ``top_layer`` and ``top_attention``."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, randomize_adapters, tiny_batch, tiny_model

from pal_adapters import AdapterConfig, MultiTaskModel, add_pal
from pal_adapters.cli_inspect import adapter_summary
from pal_adapters.inject import get_bank
from pal_adapters.peft.config import PalPeftConfig

TOPS = {"top_layer": AdapterConfig(kind="top_layer", num_heads=4),
        "top_attention": AdapterConfig(kind="top_attention", num_heads=2, hidden_size=8)}


def _model(arch: str, adapter: AdapterConfig, tasks=("a", "b", "c")) -> MultiTaskModel:
    return add_pal(tiny_model(arch), {t: 2 + i for i, t in enumerate(tasks)}, adapter=adapter).eval()


def _encoded(model: MultiTaskModel, batch, task: str) -> torch.Tensor:
    with torch.no_grad(), model.use_task(task):
        return model.backbone(**batch).last_hidden_state


@pytest.mark.parametrize("kind", TOPS)
@pytest.mark.parametrize("arch", ARCHS)
def test_top_method_is_identity_at_init_and_changes_output_once_trained(arch, kind):
    bare, batch = tiny_model(arch), tiny_batch()
    model = _model(arch, TOPS[kind])
    assert model.bank["a"].placement == "top" and model.bank["a"].depths == {model.bank.num_depths - 1}
    with torch.no_grad():
        expected = bare(**batch).last_hidden_state
    assert torch.equal(_encoded(model, batch, "a"), expected)
    randomize_adapters(model)
    assert not torch.allclose(_encoded(model, batch, "a"), expected, atol=1e-3)


@pytest.mark.parametrize("kind", TOPS)
@pytest.mark.parametrize("arch", ["bert", "distilbert", "albert", "modernbert", "deberta-v2"])
def test_predict_all_and_mixed_batches_equal_each_task_alone(arch, kind):
    model, batch = _model(arch, TOPS[kind]), tiny_batch(batch=4)
    randomize_adapters(model)
    alone = {t: model(**batch, task=t).logits for t in model.task_names}
    every = model.predict_all(**batch)
    ids = torch.tensor([2, 0, 1, 0])
    mixed = model(**batch, task_ids=ids)
    for t in model.task_names:
        assert torch.allclose(every[t], alone[t], atol=1e-5), t
        assert torch.allclose(mixed.logits[t], alone[t][mixed.task_rows[t]], atol=1e-5), t


@pytest.mark.parametrize("arch", ["bert", "albert", "modernbert"])
def test_predict_all_with_only_top_tasks_runs_every_encoder_layer_once_at_batch_size(arch):
    model, batch = _model(arch, TOPS["top_attention"]), tiny_batch(batch=3)
    rows: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw: rows.append(_rows(args, kw)), with_kwargs=True)
             for m in get_bank(model.backbone).resolved.modules]
    model.predict_all(**batch)
    for h in hooks:
        h.remove()
    assert rows == [3] * model.bank.num_depths  # each layer once, unreplicated


def _rows(args: tuple, kwargs: dict) -> int:
    return (args[0] if args else next(iter(kwargs.values()))).shape[0]


def test_predict_all_mixing_top_and_in_layer_tasks_equals_each_task_alone():
    model = _model("bert", TOPS["top_layer"], tasks=("a",))
    model.add_task("pal", {"num_labels": 2, "adapter": {"kind": "pal", "num_heads": 4, "layers": [1]}})
    model.add_task("top", {"num_labels": 3, "adapter": {"kind": "top_attention", "num_heads": 2}})
    randomize_adapters(model)
    batch = tiny_batch()
    every = model.predict_all(**batch)
    for t in model.task_names:
        assert torch.allclose(every[t], model(**batch, task=t).logits, atol=1e-5), t


@pytest.mark.parametrize("kind", TOPS)
def test_top_method_saves_and_loads_with_trained_weights(tmp_path, kind):
    model, batch = _model("bert", TOPS[kind]), tiny_batch()
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "m")
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m", backbone=tiny_model("bert")).eval()
    assert loaded.bank["b"].config == model.bank["b"].config
    shown = adapter_summary(TOPS[kind].to_dict(), {"num_layers": 2, "hidden_size": 32})
    assert (shown["method"], shown["placement"], shown["layers"]) == (kind, "top", [1])  # what inspect prints
    for t in model.task_names:
        assert torch.equal(loaded(**batch, task=t).logits, model(**batch, task=t).logits)


def test_top_method_trains_only_its_own_parameters_and_the_head():
    model, batch = _model("bert", TOPS["top_attention"], tasks=("a", "b")), tiny_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(2):
        model(**batch, task="a", labels=torch.tensor([0, 1, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("backbone.pal_adapters.a.", "heads.a.")) for n in changed)
    assert any(".ts.up." in n for n in changed)  # V^D leaves zero: the top starts to act


def test_top_config_rules():
    assert AdapterConfig(kind="top_layer").placement == "top"
    assert AdapterConfig(kind="top_layer").resolved_hidden_size(768) == 3072
    assert AdapterConfig(kind="top_attention").resolved_hidden_size(768) == 204
    with pytest.raises(ValueError, match="placement='serial' does not fit kind='top_layer'"):
        AdapterConfig(kind="top_layer", placement="serial")
    with pytest.raises(ValueError, match="placement 'top' is for the methods on top"):
        AdapterConfig(kind="pal", placement="top")
    with pytest.raises(ValueError, match="layers='top_half' does not apply"):
        AdapterConfig(kind="top_attention", layers="top_half")
    with pytest.raises(ValueError, match="lhuc=True does not apply"):
        AdapterConfig(kind="top_layer", lhuc=True)
    with pytest.raises(ValueError, match="num_heads=6 does not divide the width 32"):
        _model("bert", AdapterConfig(kind="top_layer"))


def test_peft_plugin_refuses_methods_on_top():
    with pytest.raises(ValueError, match="kind='top_attention' is a method on top of the encoder"):
        PalPeftConfig(kind="top_attention")


@pytest.mark.parametrize("adapter", ["top_attention", "{kind: top_layer, num_heads: 4}"])
def test_run_files_name_methods_on_top(tmp_path, adapter):
    from pal_adapters.config import resolve_adapter_config
    from pal_adapters.training.config import read_run_file

    run = tmp_path / "run.yaml"
    run.write_text(f"model: bert-base-uncased\nadapter: {adapter}\ntasks: {{}}\n")
    config = resolve_adapter_config(read_run_file(run).train.adapter)
    assert config.method.on_top and config.placement == "top"


def _reference_attention(x, qkv, heads, mask):
    """The reference code's BERTSelfAttention: scores / sqrt(d/heads) + (1 - mask)·-10000, softmax."""
    b, t, d = x.shape
    q, k, v = (y.view(b, t, heads, d // heads).transpose(1, 2) for y in qkv(x).split(d, dim=-1))
    scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5 + (1.0 - mask[:, None, None, :].float()) * -10000.0
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)


def test_top_attention_matches_the_transcribed_formula():
    config = AdapterConfig(kind="top_attention", num_heads=2, hidden_size=8, dropout=0.0, init="random")
    model, batch = _model("bert", config, tasks=("a",)), tiny_batch()
    randomize_adapters(model, std=0.2)
    top, h = model.bank["a"].ts, torch.randn(3, 9, 32)
    x = top.down(h)
    for block in top.inner:  # BERTAttention(config, 12) of the reference, in d_s
        x = block.norm(x + block.out(_reference_attention(x, block.attn.qkv, 2, batch["attention_mask"])))
    expected = h + top.up(x)  # the reference has no outer residual: h_f = V^D g(V^E h)
    keep = batch["attention_mask"].bool()[:, None, None, :]
    with torch.no_grad():
        assert torch.allclose(top(h, 1, keep), expected, atol=1e-5)
