"""The registry of adapter methods: ``AdapterConfig.kind`` -> the ``AdapterMethod`` that owns it.

A method says everything the rest of the library needs to know about it: which module computes
its task-specific function TS(h) (none for LHUC alone), how d_s follows from d_m, whether V^E/V^D
are shared across layers, whether it folds into the backbone (merging), its own config checks,
what ``inspect`` shows and what it costs (GUIDE §4's FLOP model). Nothing else compares ``kind`` to a string.

Adding a method = one module with its TS module (``forward(h, depth, keep)``: ``(B, T, d_m) ->
(B, T, d_m)``, identity at initialisation) + ``register_method(AdapterMethod(...))`` + its tests.
Saving, loading, routing, placement (parallel/serial), LHUC on top, the PEFT plugin and the CLI
then work for it unchanged (docs/adding-a-method.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from ..config import AdapterConfig

Build = Callable[[int, tuple[int, ...], "AdapterConfig"], nn.Module]
Flops = Callable[[int, int, int, "AdapterConfig"], float]  # (d_m, d_s, n, config) -> FLOPs per token at one site


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter method.

    Attributes:
        name: the ``AdapterConfig.kind`` string (the registry key).
        build: ``(d_model, depths, config) -> module`` computing TS(h) at each adapted depth;
            ``None`` for a method without TS (LHUC alone scales the layer output).
        size_ratio: default d_s / d_m when ``config.hidden_size`` is None; ``None`` for a method
            without a bottleneck (no d_s: ``inspect`` shows "-").
        heads_split_size: d_s is split into ``config.num_heads`` equal heads (PAL): the default is
            rounded to a multiple of them and an explicit one must divide by them.
        shares_projections: one V^E/V^D pair per task, reused by every adapted layer (PAL).
        mergeable: the adapters fold into the backbone's norms (``merge_lhuc``, PEFT's
            ``merge_and_unload``); True only for LHUC alone.
        shown: config fields ``inspect`` shows for this method besides d_s (PAL: ``num_heads``).
        check: extra validation of a config of this kind (raise ``ValueError`` naming the value).
        on_top: TS maps the encoder's output once, ``h_f = TS(h_L)`` (``placement="top"``, set for
            it by ``AdapterConfig``), instead of acting inside layers; its ``forward`` returns h_f
            itself, not a delta, and is called with ``depth`` = the last layer.
        flops: GUIDE §4's cost model, the FLOPs per token TS adds at one adapted site, from
            ``(d_m, d_s, n, config)`` (n: sequence length; a BERT layer costs 24·d_m² + 4·n·d_m);
            ``None``: negligible (LHUC's one multiply per element).
    """

    name: str
    build: Build | None
    size_ratio: float | None = 204 / 768
    heads_split_size: bool = False
    shares_projections: bool = False
    mergeable: bool = False
    shown: tuple[str, ...] = ()
    check: Callable[[AdapterConfig], None] | None = None
    on_top: bool = False
    flops: Flops | None = None

    @property
    def has_ts(self) -> bool:
        return self.build is not None

    def hidden_size(self, config: AdapterConfig, d_model: int) -> int | None:
        """d_s for a backbone of width ``d_model``: the config's, else ``size_ratio``·d_m (None without one)."""
        if config.hidden_size is not None or self.size_ratio is None:
            return config.hidden_size
        step = config.num_heads if self.heads_split_size else 1
        return max(step, round(self.size_ratio * d_model / step) * step)

    def validate(self, config: AdapterConfig) -> None:
        if self.heads_split_size and config.hidden_size is not None and config.hidden_size % config.num_heads:
            raise ValueError(f"hidden_size={config.hidden_size} is not divisible by num_heads={config.num_heads}; "
                             f"kind={self.name!r} splits d_s into equal heads")
        if self.check is not None:
            self.check(config)

    def summary(self, config: AdapterConfig, d_model: int) -> dict[str, Any]:
        """What ``inspect`` shows of a config of this method on a backbone of width ``d_model``."""
        return {"d_s": self.hidden_size(config, d_model) if self.has_ts else None,
                **{name: getattr(config, name) for name in self.shown}}


ADAPTER_METHODS: dict[str, AdapterMethod] = {}


def register_method(method: AdapterMethod, *, replace: bool = False) -> AdapterMethod:
    """Add ``method`` to ``ADAPTER_METHODS`` under ``method.name``."""
    if not isinstance(method, AdapterMethod):
        raise TypeError(f"{method!r} is not an AdapterMethod")
    if not isinstance(method.name, str) or not method.name.isidentifier():
        raise ValueError(f"AdapterMethod name={method.name!r} must be a non-empty identifier")
    if method.name in ADAPTER_METHODS and ADAPTER_METHODS[method.name] != method and not replace:
        raise ValueError(f"adapter method {method.name!r} is already registered")
    ADAPTER_METHODS[method.name] = method
    return method


def get_method(name: Any) -> AdapterMethod:
    """The method registered as ``name``; an unknown name raises, listing the valid ones."""
    if not isinstance(name, str) or name not in ADAPTER_METHODS:
        raise ValueError(f"kind={name!r} is not valid; choose one of {', '.join(map(repr, ADAPTER_METHODS))}")
    return ADAPTER_METHODS[name]


def methods() -> Mapping[str, AdapterMethod]:
    return dict(ADAPTER_METHODS)


# The built-in modules are imported when first built: config.py's presets validate against this
# registry while the adapter modules (which import config.py) may still be importing.
def _pal(d_model: int, depths: tuple[int, ...], config: AdapterConfig) -> nn.Module:
    from .pal import PAL

    return PAL(d_model, depths, config)


def _pal_ffn(d_model: int, depths: tuple[int, ...], config: AdapterConfig) -> nn.Module:
    from .pal import PALFFN

    return PALFFN(d_model, depths, config)


def _low_rank(d_model: int, depths: tuple[int, ...], config: AdapterConfig) -> nn.Module:
    from .low_rank import LowRank

    return LowRank(d_model, depths, config)


def _top_layer(d_model: int, depths: tuple[int, ...], config: AdapterConfig) -> nn.Module:
    from .top import TopLayer

    return TopLayer(d_model, depths, config)


def _top_attention(d_model: int, depths: tuple[int, ...], config: AdapterConfig) -> nn.Module:
    from .top import TopAttention

    return TopAttention(d_model, depths, config)


def _top_attention_flops(d_model: int, d_small: int, n: int, config: AdapterConfig) -> float:
    """V^E/V^D, then ``TOP_ATTENTION_LAYERS`` attention layers in d_s with an output projection."""
    from .top import TOP_ATTENTION_LAYERS

    return 4 * d_model * d_small + TOP_ATTENTION_LAYERS * (8 * d_small * d_small + 4 * n * d_small)


def _check_top(config: AdapterConfig) -> None:
    """A function on top has one site (the encoder output): no depths to choose, no LHUC to add."""
    if config.layers != "all":
        raise ValueError(f"layers={config.layers!r} does not apply to kind={config.kind!r}, which acts once on "
                         "top of the encoder; leave layers='all'")
    if config.lhuc:
        raise ValueError(f"lhuc=True does not apply to kind={config.kind!r} (a function on top of the encoder); "
                         "use kind='pal' or 'low_rank' with lhuc=True")


for _method in (
    # V^E, V^D: 2·d_m·d_s multiply-adds each; Q/K/V in d_s: 6·d_s²; scores and mixing: 4·n·d_s
    AdapterMethod("pal", _pal, heads_split_size=True, shares_projections=True, shown=("num_heads",),
                  flops=lambda d, s, n, c: 4 * d * s + 6 * s * s + 4 * n * s),
    AdapterMethod("low_rank", _low_rank, size_ratio=100 / 768, flops=lambda d, s, n, c: 4 * d * s),
    AdapterMethod("pal_ffn", _pal_ffn, shares_projections=True, shown=("ffn_layers",),
                  flops=lambda d, s, n, c: 4 * d * s + 2 * c.ffn_layers * s * s),
    AdapterMethod("lhuc", None, mergeable=True),
    # d_s of a layer on top is its feed-forward width, 4·d_m as in BERT (3072 at 768): Q/K/V/O
    # 8·d_m², the feed-forward 4·d_m·d_s, attention 4·n·d_m.
    AdapterMethod("top_layer", _top_layer, size_ratio=4.0, shown=("num_heads",), check=_check_top, on_top=True,
                  flops=lambda d, s, n, c: 8 * d * d + 4 * d * s + 4 * n * d),
    AdapterMethod("top_attention", _top_attention, heads_split_size=True, shown=("num_heads",), check=_check_top,
                  on_top=True, flops=_top_attention_flops),
):
    register_method(_method)
