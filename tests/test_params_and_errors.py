"""Parameter counts against closed forms, freezing, and the errors of bad configurations."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model
from transformers import AutoConfig, AutoModel

from pal_adapters import AdapterConfig, inject_adapters, parameter_report, remove_adapters

D, L, S = 768, 12, 204  # BERT-base width, depth; the paper's PAL size


def bert_base_on_meta():
    config = AutoConfig.for_model("bert")  # BERT-base defaults: 768 wide, 12 layers
    with torch.device("meta"):
        return AutoModel.from_config(config)


def linear(i, o):
    return i * o + o


@pytest.mark.parametrize(
    "preset, per_task",
    [
        ("pal", linear(D, S) + linear(S, D) + L * 3 * linear(S, S)),
        ("low_rank", L * (linear(D, 100) + linear(100, D))),
        ("lhuc", L * D),
        ("pal_lhuc", linear(D, S) + linear(S, D) + L * 3 * linear(S, S) + L * D),
    ],
)
def test_parameter_counts_match_closed_form_on_bert_base(preset, per_task):
    model = bert_base_on_meta()
    base = sum(p.numel() for p in model.parameters())
    tasks = [f"task{i}" for i in range(8)]
    inject_adapters(model, preset, tasks=tasks)
    report = parameter_report(model)
    assert report.backbone == base
    assert report.adapters == {t: per_task for t in tasks}
    assert report.total == base + 8 * per_task


def test_eight_pal_tasks_on_bert_base_match_the_paper():
    model = bert_base_on_meta()
    inject_adapters(model, "pal", tasks=[f"t{i}" for i in range(8)])
    report = parameter_report(model)
    assert round(sum(report.adapters.values()) / 1e6, 2) == 14.56  # the paper's +14.56M
    assert round(report.multiple_of_base, 2) == 1.13  # "1.13x"
    assert "1.133x" in str(report)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="houlsby"), r"kind='houlsby' is not valid; choose one of 'pal', 'low_rank'"),
        (dict(placement="sideways"), r"placement='sideways' is not valid; choose one of 'parallel', 'serial'"),
        (dict(layers="middle"), r"layers='middle' is not valid"),
        (dict(layers=[]), r"layers=\(\) must be"),
        (dict(kind="pal", hidden_size=10, num_heads=6), r"hidden_size=10 is not divisible by num_heads=6"),
        (dict(dropout=1.5), r"dropout=1.5 must be in \[0, 1\)"),
    ],
)
def test_bad_adapter_configs_are_rejected_with_the_value_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_layer_indices_out_of_range_are_rejected():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=r"indices \[2\] out of range for a model with 2 layers"):
        inject_adapters(model, AdapterConfig(layers=(0, 2), hidden_size=6))
    assert not hasattr(model, "pal_adapters")  # nothing half-attached


def test_explicit_and_negative_layer_indices_select_depths():
    model = tiny_model("bert")
    bank = inject_adapters(model, AdapterConfig(layers=(-1,), hidden_size=6))
    assert bank["default"].depths == {1}
    remove_adapters(model)


def test_unsupported_model_names_its_type_and_how_to_pass_a_layout():
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=128)
    model = AutoModel.from_config(config)
    with pytest.raises(ValueError, match=r"cannot adapt model type 'gpt2'.*Pass a layout"):
        inject_adapters(model, "pal")


def test_unknown_task_and_bad_task_names_are_rejected():
    model = tiny_model("bert")
    bank = inject_adapters(model, AdapterConfig(hidden_size=6), tasks=["a"])
    with pytest.raises(KeyError, match=r"unknown task 'b'; this model's tasks: \['a'\]"):
        bank.set_task("b")
    with pytest.raises(ValueError, match=r"task name 'a.b' must be"):
        bank.add_task("a.b")
    with pytest.raises(ValueError, match=r"task 'a' already has adapters"):
        bank.add_task("a")
    with pytest.raises(ValueError, match="already has pal_adapters"):
        inject_adapters(model, "pal")
    remove_adapters(model)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"adapter preset='palz' is not valid; choose one of 'pal'"):
        inject_adapters(tiny_model("bert"), "palz")
