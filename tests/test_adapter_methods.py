"""The seam for adapter methods: a new method is one registered ``AdapterMethod`` (and its module);
saving, loading, placement, LHUC on top, merging rules, inspect and the PEFT plugin follow."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from helpers import tiny_batch, tiny_model
from torch import nn

from pal_adapters import AdapterConfig, MultiTaskModel, add_pal
from pal_adapters.adapters import ADAPTER_METHODS, AdapterMethod, get_method, register_method
from pal_adapters.peft.config import PalPeftConfig


class ScaledCopy(nn.Module):
    """A toy method: TS(h) = w_depth ⊙ h, w = 0 at initialisation (so injection is the identity)."""

    def __init__(self, d_model: int, depths: tuple[int, ...], config: AdapterConfig):
        super().__init__()
        self.w = nn.ParameterDict({str(d): nn.Parameter(torch.zeros(d_model)) for d in depths})

    def forward(self, h: torch.Tensor, depth: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        return h * self.w[str(depth)]


@pytest.fixture
def scaled_copy():
    method = register_method(AdapterMethod("scaled_copy", ScaledCopy))
    yield method
    del ADAPTER_METHODS["scaled_copy"]


@pytest.mark.parametrize("placement", ["parallel", "serial"])
def test_a_registered_method_is_identity_at_init_and_trains_saves_and_loads(scaled_copy, tmp_path, placement):
    config = AdapterConfig(kind="scaled_copy", placement=placement, lhuc=True)
    bare, batch = tiny_model("bert"), tiny_batch()
    model = add_pal(tiny_model("bert"), tasks={"a": 2}, adapter=config)
    with torch.no_grad():
        assert torch.allclose(model.backbone(**batch).last_hidden_state, bare(**batch).last_hidden_state, atol=1e-6)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(**batch, task="a", labels=torch.tensor([0, 1, 1])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    w = model.bank["a"].ts.w["0"]
    assert w.abs().sum() > 0  # the method's own parameters trained
    model.save_pretrained(tmp_path / "m")
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m", backbone=tiny_model("bert"))
    assert torch.equal(loaded.bank["a"].ts.w["0"], w.detach())
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch, task="a").logits, model(**batch, task="a").logits, atol=1e-6)


def test_a_registered_method_follows_the_method_rules(scaled_copy):
    config = AdapterConfig(kind="scaled_copy", hidden_size=None)
    assert config.has_ts and not config.uses_lhuc and config.resolved_hidden_size(768) == 204
    assert scaled_copy.summary(config, 768) == {"d_s": 204}
    model = add_pal(tiny_model("bert"), tasks={"a": 2}, adapter=config)
    with pytest.raises(ValueError, match=r"kind='scaled_copy'.* cannot be merged.*only kind in \['lhuc'\]"):
        model.merge_lhuc("a")
    assert PalPeftConfig(kind="scaled_copy").adapter_config == config


def test_methods_are_refused_by_name_and_not_registered_twice(scaled_copy):
    with pytest.raises(ValueError, match="kind='nope' is not valid; choose one of 'pal', 'low_rank', 'pal_ffn', "
                                         "'lhuc', 'top_layer', 'top_attention', 'scaled_copy'"):
        AdapterConfig(kind="nope")
    with pytest.raises(ValueError, match="'scaled_copy' is already registered"):
        register_method(AdapterMethod("scaled_copy", None))
    with pytest.raises(ValueError, match="must be a non-empty identifier"):
        register_method(AdapterMethod("no such", None))


@pytest.mark.parametrize("kind, d_s", [("pal", 204), ("low_rank", 100), ("pal_ffn", 204), ("lhuc", None)])
def test_the_built_in_methods_keep_the_paper_sizes(kind, d_s):
    method = get_method(kind)
    assert method.summary(AdapterConfig(kind=kind), 768)["d_s"] == d_s
    assert method.mergeable == (kind == "lhuc") and method.shares_projections == (kind in ("pal", "pal_ffn"))


def test_a_pal_d_s_must_split_into_its_heads_and_a_low_rank_one_need_not():
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_heads=6; kind='pal' splits"):
        AdapterConfig(kind="pal", hidden_size=100)
    assert AdapterConfig(kind="low_rank", hidden_size=100).resolved_hidden_size(768) == 100


def test_the_peft_config_mirrors_every_adapter_field_with_the_same_default():
    core = {f.name: f for f in dataclasses.fields(AdapterConfig)}
    peft = {f.name: f for f in dataclasses.fields(PalPeftConfig)}
    assert set(core) <= set(peft), f"PalPeftConfig lacks {sorted(set(core) - set(peft))}"
    for name, f in core.items():
        assert peft[name].default == f.default, name
    assert PalPeftConfig().adapter_config == AdapterConfig()


# ---- the toy method of docs/adding-a-method.md: defined here, nothing in the library changes -------
class ScaleShift(nn.Module):
    """TS(h) = a_depth ⊙ h + b_depth, ``(B, T, d_m) -> (B, T, d_m)``; a = b = 0 at initialisation."""

    def __init__(self, d_model: int, depths: tuple[int, ...], config: AdapterConfig):
        super().__init__()
        self.scale = nn.ParameterDict({str(d): nn.Parameter(torch.zeros(d_model)) for d in depths})
        self.shift = nn.ParameterDict({str(d): nn.Parameter(torch.zeros(d_model)) for d in depths})

    def forward(self, h: torch.Tensor, depth: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        return h * self.scale[str(depth)] + self.shift[str(depth)]


@pytest.fixture
def scale_shift():
    method = register_method(AdapterMethod("scale_shift", ScaleShift, size_ratio=None))  # no bottleneck: no d_s
    yield method
    del ADAPTER_METHODS["scale_shift"]


@pytest.mark.parametrize("placement", ["parallel", "serial"])
def test_a_toy_scale_and_shift_method_trains_only_its_own_parameters_and_round_trips(scale_shift, tmp_path,
                                                                                      placement):
    from pal_adapters.cli_inspect import inspect_path, render_inspection

    bare, batch, labels = tiny_model("bert"), tiny_batch(), torch.tensor([0, 1, 1])
    model = add_pal(tiny_model("bert"), tasks={"a": 2}, adapter=AdapterConfig(kind="scale_shift", placement=placement))
    with torch.no_grad():  # identity at initialisation
        assert torch.equal(model.backbone(**batch).last_hidden_state, bare(**batch).last_hidden_state)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(8):
        loss = model(**batch, task="a", labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    own = {n for n in before if n.startswith(("backbone.pal_adapters.a.ts.", "heads.a."))}
    assert changed == own and any(".ts.scale." in n for n in own) and any(".ts.shift." in n for n in own)

    model.save_pretrained(tmp_path / "m")
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m", backbone=tiny_model("bert"))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch, task="a").logits, model(**batch, task="a").logits)
    info = inspect_path(tmp_path / "m")
    assert info["tasks"][0]["adapter"] == {"method": "scale_shift", "lhuc": False, "placement": placement,
                                           "layers": [0, 1], "d_s": None}
    assert re.search(rf"^a +classification +2 +scale_shift +{placement} +0-1 +- ", render_inspection(info), re.M)


def test_every_builtin_method_with_ts_states_its_cost_and_pal_matches_guide_section_4():
    """GUIDE §4: a PAL adds ≈ 6.7% of a BERT-base layer's FLOPs at d_m 768, d_s 204, n 128."""
    builtin = ("pal", "low_rank", "pal_ffn", "top_layer", "top_attention")
    assert all(ADAPTER_METHODS[m].flops is not None for m in builtin)
    assert get_method("lhuc").flops is None  # one multiply per element: negligible
    config = AdapterConfig(kind="pal")
    layer = 24 * 768**2 + 4 * 128 * 768
    assert get_method("pal").flops(768, 204, 128, config) / layer == pytest.approx(0.067, abs=5e-4)
    # a layer on top with BERT's own sizes costs what a BERT layer costs
    assert get_method("top_layer").flops(768, 3072, 128, AdapterConfig(kind="top_layer")) == layer
