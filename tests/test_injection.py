"""Injection into every supported encoder family: identity at init, effect, gradients, masks."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, hidden, randomize_adapters, tiny_batch, tiny_model

from pal_adapters import AdapterConfig, freeze_backbone, inject_adapters, remove_adapters

METHODS = {
    "pal": dict(kind="pal", output_activation="gelu"),
    "low_rank": dict(kind="low_rank"),
    "pal_ffn": dict(kind="pal_ffn", ffn_layers=2),
    "lhuc": dict(kind="lhuc"),
    "pal+lhuc": dict(kind="pal", lhuc=True, output_activation="gelu"),
}
PLACEMENTS = ["parallel", "serial"]


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def config_for(method: str, placement: str, layers="all", **kw) -> AdapterConfig:
    return AdapterConfig(placement=placement, layers=layers, num_heads=2, hidden_size=8, dropout=0.0,
                         **METHODS[method], **kw)


@pytest.mark.parametrize("layers", ["all", "top_half"])
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("method", list(METHODS))
def test_adapters_are_identity_at_init(arch_model, method, placement, layers):
    _, model = arch_model
    batch = tiny_batch()
    before = hidden(model, batch)
    inject_adapters(model, config_for(method, placement, layers), tasks=["t"])
    try:
        after = hidden(model, batch)
    finally:
        remove_adapters(model)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("method", list(METHODS))
def test_nonzero_adapters_change_outputs_and_removal_restores(arch_model, method, placement):
    _, model = arch_model
    batch = tiny_batch()
    before = hidden(model, batch)
    inject_adapters(model, config_for(method, placement), tasks=["t"])
    randomize_adapters(model)
    changed = hidden(model, batch)
    remove_adapters(model)
    assert (changed - before).abs().max() > 1e-3
    torch.testing.assert_close(hidden(model, batch), before, rtol=0, atol=0)


@pytest.mark.parametrize("method", list(METHODS))
def test_gradients_reach_adapters_and_nothing_else_when_frozen(arch_model, method):
    _, model = arch_model
    bank = inject_adapters(model, config_for(method, "parallel"), tasks=["t"])
    try:
        randomize_adapters(model)
        freeze_backbone(model)
        model.zero_grad(set_to_none=True)
        hidden(model, tiny_batch()).pow(2).sum().backward()
        for name, p in model.named_parameters():
            if "pal_adapters." in name:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name
        assert all(p.requires_grad for p in bank.parameters())
    finally:
        freeze_backbone(model, frozen=False)
        model.zero_grad(set_to_none=True)
        remove_adapters(model)


@pytest.mark.parametrize("method", ["pal", "pal+lhuc", "low_rank"])
def test_padding_does_not_change_real_tokens(arch_model, method):
    _, model = arch_model
    inject_adapters(model, config_for(method, "parallel"), tasks=["t"])
    try:
        randomize_adapters(model)
        short = tiny_batch(batch=2, length=6, pad_rows=())
        padded = {k: torch.cat([v, torch.zeros(2, 4, dtype=v.dtype)], dim=1) for k, v in short.items()}
        padded["input_ids"][:, 6:] = 0
        torch.testing.assert_close(hidden(model, padded)[:, :6], hidden(model, short), rtol=1e-4, atol=1e-5)
    finally:
        remove_adapters(model)


def test_tasks_route_to_their_own_adapters(arch_model):
    _, model = arch_model
    bank = inject_adapters(model, config_for("pal", "parallel"), tasks=["a", "b"])
    try:
        randomize_adapters(model)
        batch = tiny_batch()
        out_a = hidden(model, batch)
        with bank.use_task("b"):
            out_b = hidden(model, batch)
        with bank.use_task(None):
            bare = hidden(model, batch)
        assert bank.router.active == "a"
        assert (out_a - out_b).abs().max() > 1e-3 and (out_a - bare).abs().max() > 1e-3
    finally:
        remove_adapters(model)


@pytest.mark.parametrize("arch", ["ernie", "data2vec-text"])
def test_unlisted_bert_like_models_are_detected_and_adapted(arch):
    from pal_adapters.layouts import LAYOUTS

    assert arch not in LAYOUTS
    model = tiny_model(arch)
    batch = tiny_batch()
    before = hidden(model, batch)
    inject_adapters(model, config_for("pal", "parallel"), tasks=["t"])
    torch.testing.assert_close(hidden(model, batch), before, rtol=0, atol=1e-6)
    randomize_adapters(model)
    assert (hidden(model, batch) - before).abs().max() > 1e-3
    remove_adapters(model)


def test_the_placement_table_has_a_row_for_every_placement_and_layer_kind():
    from typing import get_args

    from pal_adapters.config import Placement
    from pal_adapters.placement import PLACEMENTS, SCALE, Stage, last_residual, site_rules

    assert set(PLACEMENTS) == {(p, pre) for p in get_args(Placement) for pre in (False, True)}
    # Parallel TS reads the layer input and joins the last residual sum; serial TS maps the output.
    for pre_ln in (False, True):
        rules = site_rules(pre_ln)
        assert rules["parallel"].reads_input and rules["parallel"].acts_at is last_residual(pre_ln)
        assert not rules["serial"].reads_input and rules["serial"].acts_at is Stage.OUTPUT
    assert SCALE.scales and SCALE.acts_at is Stage.OUTPUT
    assert last_residual(True) is Stage.OUTPUT and last_residual(False) is Stage.RESIDUAL


def test_replication_repeats_batch_shaped_values_only():
    from pal_adapters.replicate import replication_plan

    plan = replication_plan(depth=1, n=3, batch=2)
    x, other = torch.arange(4.0).reshape(2, 2), torch.zeros(5, 2)
    assert torch.equal(plan.repeat(x), torch.cat([x, x, x]))
    assert plan.repeat(other) is other and plan.repeat(None) is None and plan.repeat(7) == 7
    assert plan.repeat(torch.tensor(1.0)).dim() == 0
    pair = plan.repeat((x, other))
    assert pair[0].shape == (6, 2) and pair[1] is other
    assert replication_plan(depth=0, n=1, batch=2) is None
