"""Typed, frozen configuration for adapters and tasks.

Every option is documented once, here. Configs are validated in ``__post_init__`` so a bad value
fails when the config is built, with a message that names the value and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .validation import check_choice, check_fields, from_fields

Kind = str  # a key of pal_adapters.adapters.methods.ADAPTER_METHODS (pal, low_rank, pal_ffn, lhuc, ...)
Placement = Literal["parallel", "serial", "top"]
LayerSpec = Literal["all", "top_half", "bottom_half"]
Activation = Literal["gelu", "relu", "tanh", "identity"]
TaskType = str  # a key of pal_adapters.tasks.TASK_KINDS (the registry of task kinds)
Pooling = Literal["cls", "pooler", "mean"]


@dataclass(frozen=True)
class AdapterConfig:
    """How task-specific functions TS(h) = V^D g(V^E h) are built and where they go.

    Attributes:
        kind: the adapter method, a key of ``adapters.methods.ADAPTER_METHODS``: ``"pal"`` (g =
            multi-head attention in d_s, V^E/V^D shared across layers), ``"low_rank"`` (g =
            ``activation``, V^E/V^D per layer), ``"pal_ffn"`` (g = a small feed-forward net in
            d_s, V^E/V^D shared), ``"lhuc"`` (no TS: the layer output is scaled by
            ``2·sigmoid(θ)``), or a method registered with ``register_method``.
        lhuc: also learn an LHUC vector per layer that scales TS(h) (the paper's "+LHUC"). Implied
            by ``kind="lhuc"``.
        placement: ``"parallel"`` adds TS(layer input) to the residual sum feeding the layer's
            last normalisation (pre-LN layers: to the layer output); ``"serial"`` maps the layer
            output ``h -> h + TS(h)``. LHUC alone scales the layer output in both placements.
        layers: ``"all"``, ``"top_half"``, ``"bottom_half"`` or explicit depth indices.
        hidden_size: d_s. ``None`` derives it from d_m by the method's rule (PAL: 0.266·d_m
            rounded to a multiple of ``num_heads``, 204 at 768; low-rank: 0.13·d_m, 100 at 768).
        num_heads: attention heads of a PAL (the reference code uses 6).
        activation: g for ``low_rank`` and the hidden activation of ``pal_ffn``.
        output_activation: applied after V^D. The PAL reference code applies GELU there (preset
            ``pal_reference``); the paper's formula and the ``pal`` preset do not.
        ffn_layers: depth of the ``pal_ffn`` network (1 or 2).
        dropout: dropout on PAL attention probabilities / inside the ``pal_ffn`` network.
        init: ``"identity"`` zero-initialises V^D (and θ = 0) so injection changes nothing until
            training; ``"random"`` draws V^D like V^E (useful only for tests and ablations).
        init_std: standard deviation of the normal init of the non-zero weights (the ``pal``
            presets: ``PAL_INIT_STD`` = 0.05, measured better than 0.02 on GLUE).
    """

    kind: Kind = "pal"
    lhuc: bool = False
    placement: Placement = "parallel"
    layers: LayerSpec | tuple[int, ...] = "all"
    hidden_size: int | None = None
    num_heads: int = 6
    activation: Activation = "gelu"
    output_activation: Activation = "identity"
    ffn_layers: int = 1
    dropout: float = 0.1
    init: Literal["identity", "random"] = "identity"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        method = self.method  # an unknown kind raises here, listing the registered methods
        check_choice("placement", self.placement, get_args(Placement))
        self._check_top(method)
        check_choice("activation", self.activation, get_args(Activation))
        check_choice("output_activation", self.output_activation, get_args(Activation))
        check_choice("init", self.init, ("identity", "random"))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if isinstance(self.layers, str):
            check_choice("layers", self.layers, get_args(LayerSpec))
        elif not isinstance(self.layers, tuple) or not self.layers or not all(isinstance(i, int) for i in self.layers):
            raise ValueError(f"layers={self.layers!r} must be 'all', 'top_half', 'bottom_half' or a non-empty "
                             "list of layer indices")
        check_fields(self, "adapter config")  # every type, before the range checks below compare numbers
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size={self.hidden_size} must be a positive integer or None")
        if self.num_heads < 1:
            raise ValueError(f"num_heads={self.num_heads} must be >= 1")
        if self.ffn_layers not in (1, 2):
            raise ValueError(f"ffn_layers={self.ffn_layers} must be 1 or 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ValueError(f"init_std={self.init_std} must be a finite number > 0")
        method.validate(self)

    def _check_top(self, method: Any) -> None:
        """``placement="top"`` belongs to the methods on top, which have no other placement."""
        if method.on_top and self.placement == "parallel":  # the default: the method's own placement
            object.__setattr__(self, "placement", "top")
        if method.on_top != (self.placement == "top"):
            from .adapters.methods import ADAPTER_METHODS

            tops = [name for name, m in ADAPTER_METHODS.items() if m.on_top]
            raise ValueError(f"placement={self.placement!r} does not fit kind={self.kind!r}: placement 'top' is "
                             f"for the methods on top of the encoder ({', '.join(tops)}), which have no other")

    @property
    def method(self) -> Any:
        """The ``AdapterMethod`` of ``kind`` (``adapters/methods.py``): what it builds and how it behaves."""
        from .adapters.methods import get_method  # the methods' modules import this one

        return get_method(self.kind)

    @property
    def has_ts(self) -> bool:
        """Whether a task-specific function TS(h) is built (everything but LHUC alone)."""
        return self.method.has_ts

    @property
    def uses_lhuc(self) -> bool:
        """LHUC vectors are learnt: the method has no TS (LHUC alone), or ``lhuc=True`` on top."""
        return not self.method.has_ts or self.lhuc

    def resolved_hidden_size(self, d_model: int) -> int | None:
        """d_s for a backbone of width ``d_model`` (``hidden_size``, else the method's rule; may be None)."""
        return self.method.hidden_size(self, d_model)

    def resolved_layers(self, num_layers: int) -> tuple[int, ...]:
        """The adapted depths for a backbone of ``num_layers`` layers, sorted; a method on top has
        one, the last layer, on whose output it acts."""
        if self.method.on_top:
            return (num_layers - 1,)
        if self.layers == "all":
            return tuple(range(num_layers))
        if self.layers == "top_half":
            return tuple(range(num_layers // 2, num_layers))
        if self.layers == "bottom_half":
            return tuple(range(num_layers // 2))
        bad = [i for i in self.layers if not -num_layers <= i < num_layers]
        if bad:
            raise ValueError(f"layers={list(self.layers)} has indices {bad} out of range for a model with "
                             f"{num_layers} layers (valid: 0..{num_layers - 1}, or negative from the top)")
        return tuple(sorted({i % num_layers for i in self.layers}))

    def replace(self, **changes: Any) -> AdapterConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["layers"], tuple):
            d["layers"] = list(d["layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterConfig:
        return from_fields(cls, d, "adapter config")


# Named presets. "pal" is the paper's PAL, TS(h) = V^D·attn(V^E h) (6 heads, d_s = 0.266·d_m);
# "pal_reference" adds the reference code's GELU after V^D. That GELU bounds TS(h) below by -0.17
# and halves V^D's first gradients: with a frozen MiniLM it cost 0.24 STS-B Pearson after 100
# steps (0.43 vs 0.67, benchmarks/README.md), so the default PAL leaves it out.
# The PAL presets draw V^E and the attention's Q/K/V with std 0.05 instead of BERT's 0.02: at the
# full GLUE budget on MiniLM, frozen PALs 64.6 vs 63.4, tuned (c) 68.4 vs 68.2 (benchmarks/README.md).
# "pal_reference" keeps the reference code's 0.02. The other PAL presets are variations of "pal".
PAL_INIT_STD = 0.05
_PAL = AdapterConfig(kind="pal", init_std=PAL_INIT_STD)
PRESETS: dict[str, AdapterConfig] = {
    "pal": _PAL,
    "pal_reference": AdapterConfig(kind="pal", output_activation="gelu"),
    "pal_top_half": _PAL.replace(layers="top_half"),
    "pal_lhuc": _PAL.replace(lhuc=True),
    "pal_ffn": AdapterConfig(kind="pal_ffn"),
    "low_rank": AdapterConfig(kind="low_rank", activation="gelu"),
    "low_rank_lhuc": AdapterConfig(kind="low_rank", activation="gelu", lhuc=True),
    "lhuc": AdapterConfig(kind="lhuc"),
    "serial_adapter": AdapterConfig(kind="low_rank", activation="gelu", placement="serial"),
    # PALs §3.2, the encoder's layers untouched: a transformer layer per task / projected attention on top.
    "top_layer": AdapterConfig(kind="top_layer"),
    "top_attention": AdapterConfig(kind="top_attention"),
}


def resolve_adapter_config(adapter: AdapterConfig | str | dict[str, Any] | None) -> AdapterConfig:
    """Accept a config, a preset name, a dict of fields, or ``None`` (the ``"pal"`` preset)."""
    if adapter is None:
        return PRESETS["pal"]
    if isinstance(adapter, AdapterConfig):
        return adapter
    if isinstance(adapter, str):
        check_choice("adapter preset", adapter, tuple(PRESETS))
        return PRESETS[adapter]
    if isinstance(adapter, dict):
        return AdapterConfig.from_dict(adapter)
    raise TypeError(f"adapter={adapter!r}: expected an AdapterConfig, a preset name {sorted(PRESETS)} or a dict")


@dataclass(frozen=True)
class TaskConfig:
    """One task of a multi-task model: its head, and optionally its own adapter.

    Attributes:
        type: the kind of task, a key of ``pal_adapters.tasks.TASK_KINDS`` (classification,
            regression, multi_label, ranking, token_classification, extractive_qa, ...).
        num_labels: classes (classification, token classification, multi-label; default 2);
            fixed by some kinds (``TaskKind.fixed_num_labels``: 1 for regression and ranking, 2 for
            extractive QA's start/end), which is what ``None`` resolves to.
        adapter: this task's adapter config; ``None`` uses the model-level one.
        dropout: dropout before the head (MT-DNN uses per-task dropout).
        pooling: ``"mean"`` masked mean over tokens, ``"cls"`` first token, ``"pooler"`` the
            backbone's pooler if it has one. Ignored by token-level heads. ``"mean"`` is the
            default: sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained to
            mean-pool (their pooler is untrained), and on a frozen MiniLM it beat ``"cls"``
            (STS-B 0.43 vs 0.27 Pearson after 100 steps); with a tuned backbone the two tie.
        labels: optional class names, index = class id.
        num_candidates: ranking only: how many consecutive rows (candidates) belong to one query.
        options: the kind's options (``TaskKind.options``, e.g. QA ``doc_stride``), validated by the
            kind; unset ones take the kind's defaults. Saved with the model, so training-time
            evaluation, ``eval``, ``predict`` and the server all build the same kind.
        max_length: the task's token limit: training truncates (QA: windows) to it, ``predict``
            and the server encode with it.
        inputs: the input form the task reads (``"text"``, ``"pair"`` or ``"question_context"``,
            see ``tasks/rows.py``); ``None`` = any form its kind reads. Kinds with one form fix
            it; training sets it from the data's text columns.
    """

    type: TaskType = "classification"
    num_labels: int | None = None
    adapter: AdapterConfig | None = None
    dropout: float = 0.1
    pooling: Pooling = "mean"
    labels: tuple[str, ...] | None = field(default=None)
    num_candidates: int | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    max_length: int = 128
    inputs: str | None = None

    def __post_init__(self) -> None:
        from .tasks import get_kind  # the registry's kinds import this module

        kind = get_kind(self.type)  # an unknown type raises here, listing the registered kinds
        check_choice("pooling", self.pooling, get_args(Pooling))
        if isinstance(self.labels, list):
            object.__setattr__(self, "labels", tuple(self.labels))
        if isinstance(self.adapter, (str, dict)):
            object.__setattr__(self, "adapter", resolve_adapter_config(self.adapter))
        fixed = kind.fixed_num_labels
        if self.num_labels is None:  # from the label names where they are classes, else 2
            named = len(self.labels) if self.labels and kind.uses_label_names else 2
            object.__setattr__(self, "num_labels", named if fixed is None else fixed)
        if self.num_labels < 1:
            raise ValueError(f"num_labels={self.num_labels} must be >= 1")
        if fixed is not None and self.num_labels != fixed:
            raise ValueError(f"num_labels={self.num_labels} does not fit type={self.type!r}, "
                             f"which needs num_labels={fixed}")
        if self.labels is not None and len(self.labels) != self.num_labels and kind.uses_label_names:
            raise ValueError(f"labels={list(self.labels)} has {len(self.labels)} names but "
                             f"num_labels={self.num_labels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        self._check_reading(kind)
        kind.check_config(self)  # the kind's own fields (ranking: num_candidates)
        kind(self)  # the kind checks its options: unknown names and bad values raise, naming them

    def _check_reading(self, kind: Any) -> None:
        """``options``, ``max_length`` and ``inputs``: what the task reads and how."""
        if not isinstance(self.options, Mapping) or not all(isinstance(k, str) for k in self.options):
            raise ValueError(f"options={self.options!r} must be a mapping of option name -> value")
        object.__setattr__(self, "options", dict(self.options))
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length={self.max_length!r} must be an integer >= 2")
        if self.inputs is None and len(kind.input_forms) == 1:
            object.__setattr__(self, "inputs", kind.input_forms[0])
        if self.inputs is not None:
            check_choice("inputs", self.inputs, kind.input_forms)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adapter"] = self.adapter.to_dict() if self.adapter else None
        d["labels"] = list(self.labels) if self.labels else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskConfig:
        return from_fields(cls, d, "task config")
