"""Injected models survive what users do to models: dtype/device moves, modes, checkpointing, compile."""

from __future__ import annotations

import pytest
import torch
from helpers import hidden, randomize_adapters, tiny_batch, tiny_config, tiny_model
from transformers import AutoModelForSequenceClassification

from pal_adapters import AdapterConfig, freeze_backbone, inject_adapters, remove_adapters

CONFIG = AdapterConfig(kind="pal", lhuc=True, output_activation="gelu", hidden_size=8, num_heads=2, dropout=0.0)


def test_dtype_move_carries_adapters_and_keeps_outputs():
    model = tiny_model("bert")
    inject_adapters(model, CONFIG)
    randomize_adapters(model)
    batch = tiny_batch()
    out32 = hidden(model, batch)
    model.to(torch.float64)
    assert {p.dtype for p in model.pal_adapters.parameters()} == {torch.float64}
    torch.testing.assert_close(hidden(model, batch), out32.double(), rtol=1e-4, atol=1e-5)


def test_train_and_eval_modes_reach_the_adapters():
    model = tiny_model("bert")
    bank = inject_adapters(model, CONFIG.replace(dropout=0.5))
    randomize_adapters(model)
    model.train()
    assert all(m.training for m in bank.modules())
    batch = tiny_batch()
    torch.manual_seed(0)
    a = hidden(model, batch)
    torch.manual_seed(1)
    b = hidden(model, batch)
    assert (a - b).abs().max() > 0  # attention dropout inside the PAL is live in training
    model.eval()
    assert not any(m.training for m in bank.modules())
    torch.testing.assert_close(hidden(model, batch), hidden(model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["bert", "deberta-v2", "modernbert"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_adapter_gradients(arch, reentrant):
    model = tiny_model(arch)
    inject_adapters(model, CONFIG)
    randomize_adapters(model)
    freeze_backbone(model)
    model.train()
    batch = tiny_batch()

    def adapter_grads():
        model.zero_grad(set_to_none=True)
        hidden(model, batch).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = adapter_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:  # reentrant checkpointing needs an input that requires grad when the backbone is frozen
        model.enable_input_require_grads()
    checkpointed = adapter_grads()
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_torch_compile_gives_the_same_outputs():
    model = tiny_model("bert")
    inject_adapters(model, CONFIG)
    randomize_adapters(model)
    batch = tiny_batch()
    expected = hidden(model, batch)
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-6)


def test_wrapped_sequence_classification_model_is_adapted():
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("roberta", num_labels=3)).eval()
    batch = tiny_batch()
    before = model(**batch).logits
    inject_adapters(model, CONFIG)
    torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=1e-6)
    randomize_adapters(model)
    assert (model(**batch).logits - before).abs().max() > 1e-3
    assert all(n.startswith(("roberta.", "classifier.", "pal_adapters.")) for n, _ in model.named_parameters())
    remove_adapters(model)


def test_albert_shared_layer_gets_adapters_per_depth():
    model = tiny_model("albert", num_hidden_layers=3)
    batch = tiny_batch()
    bare = hidden(model, batch)
    bank = inject_adapters(model, "lhuc")
    assert bank.num_depths == 3 and bank["default"].depths == {0, 1, 2}
    theta = torch.randn(32)
    with torch.no_grad():
        bank["default"].lhuc.theta["2"].copy_(theta)  # only the last application of the shared layer
    # LHUC alone scales the output of depth 2, the last one: the final states are scaled exactly.
    torch.testing.assert_close(hidden(model, batch), bare * 2 * torch.sigmoid(theta), rtol=1e-5, atol=1e-6)


def test_adapter_state_dict_keys_share_one_prefix_and_backbone_keys_are_unchanged():
    model = tiny_model("distilbert")
    keys_before = set(model.state_dict())
    inject_adapters(model, CONFIG, tasks=["a", "b"])
    added = set(model.state_dict()) - keys_before
    assert added and all(k.startswith("pal_adapters.") for k in added)
    assert keys_before <= set(model.state_dict())


def test_adapters_and_heads_added_to_an_eval_model_start_in_eval_mode():
    from pal_adapters import add_pal

    model = tiny_model("bert")  # eval mode
    bank = inject_adapters(model, CONFIG.replace(dropout=0.5))
    assert not any(m.training for m in bank.modules())
    multi = add_pal(tiny_model("bert"), {"a": 2}).eval()
    multi.add_task("b", 3)
    assert not any(m.training for m in multi.modules())
