"""Where the pieces of an encoder are: one ``Layout`` row per model family, plus detection.

A layout names, relative to the bare encoder (``model.base_model``):
- ``layers``: the ``nn.ModuleList`` of transformer layers;
- ``last_norm``: inside one layer, the normalisation fed by the layer's last residual sum
  (post-LN); ``None`` for pre-LN layers, whose output *is* that residual sum;
- ``input_module``: inside one layer, the first submodule that receives the layer input as its
  first argument. The input is read there, not at the layer itself, because transformers 5
  checkpoints a layer's ``forward``: hooks of inner modules run again in the backward recompute
  and must see the recomputed input, hooks of the layer itself do not;
- ``inner``: for models that group layers (ALBERT), the list inside each group;
- ``shared``: the layer modules are applied more than once (ALBERT shares one layer across all
  depths), so a depth is known only from the order of calls;
- ``batch_args``: layer arguments besides the hidden states that carry the batch dimension
  (replicated when one input is run for every task);
- ``pads_sequence``: the encoder pads the sequence itself, at the end and with padding positions
  (Longformer: to a multiple of ``attention_window``), so its layers see more positions than the
  ``attention_mask`` it was given; the adapters' padding mask is extended to match.
Adding an encoder family is one row here plus a test.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layout:
    layers: str
    last_norm: str | None
    input_module: str = "attention"
    inner: str | None = None
    shared: bool = False
    batch_args: tuple[str, ...] = ("attention_mask",)
    pads_sequence: bool = False

    @property
    def pre_ln(self) -> bool:
        return self.last_norm is None


BERT_LIKE = Layout(layers="encoder.layer", last_norm="output.LayerNorm")

LAYOUTS: dict[str, Layout] = {
    "bert": BERT_LIKE,
    "roberta": BERT_LIKE,
    "xlm-roberta": BERT_LIKE,
    "camembert": BERT_LIKE,
    "electra": BERT_LIKE,
    "deberta": BERT_LIKE,
    "deberta-v2": BERT_LIKE,
    "mpnet": Layout(layers="encoder.layer", last_norm="output.LayerNorm",
                    batch_args=("attention_mask", "position_bias")),
    "distilbert": Layout(layers="transformer.layer", last_norm="output_layer_norm"),
    # Pre-LN BERT: the layer output is its last residual sum (the final norm is the encoder's ``ln``).
    "megatron-bert": Layout(layers="encoder.layer", last_norm=None),
    "longformer": Layout(layers="encoder.layer", last_norm="output.LayerNorm", pads_sequence=True,
                         batch_args=("attention_mask", "is_index_masked", "is_index_global_attn")),
    "albert": Layout(layers="encoder.albert_layer_groups", last_norm="full_layer_layer_norm",
                     inner="albert_layers", shared=True),
    "modernbert": Layout(layers="layers", last_norm=None, input_module="attn_norm",
                         batch_args=("attention_mask", "position_embeddings")),
}

# Tried in order on models of unknown type: the first whose pieces exist is used.
_CANDIDATES = (
    BERT_LIKE,
    LAYOUTS["distilbert"],
    LAYOUTS["modernbert"],
)


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """``root.<path>`` for a dotted path, or None when any piece is missing."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


@dataclass(frozen=True)
class ResolvedLayout:
    """A layout applied to one model: the layer modules and how many depths they serve."""

    layout: Layout
    modules: tuple[nn.Module, ...]
    num_depths: int

    def input_module_of(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.layout.input_module)

    def norm_of(self, layer: nn.Module) -> nn.Module | None:
        return None if self.layout.last_norm is None else layer.get_submodule(self.layout.last_norm)


def _layer_modules(base: nn.Module, layout: Layout) -> tuple[nn.Module, ...] | None:
    layers = get_submodule(base, layout.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    if layout.inner is None:
        return tuple(layers)
    inner = [get_submodule(group, layout.inner) for group in layers]
    if any(not isinstance(g, nn.ModuleList) for g in inner):
        return None
    return tuple(m for g in inner for m in g)


def _fits(base: nn.Module, layout: Layout) -> ResolvedLayout | None:
    modules = _layer_modules(base, layout)
    if modules is None:
        return None
    for path in filter(None, (layout.last_norm, layout.input_module)):
        if any(get_submodule(m, path) is None for m in modules):
            return None
    num_depths = len(modules)
    if layout.shared:  # ALBERT: groups are applied num_hidden_layers times in total
        config = base.config
        num_depths = config.num_hidden_layers * config.inner_group_num
    return ResolvedLayout(layout, modules, num_depths)


def resolve_layout(model: nn.Module, layout: Layout | None = None) -> tuple[nn.Module, ResolvedLayout]:
    """Return the bare encoder of ``model`` and its resolved layout.

    ``model`` may be a bare encoder (``AutoModel``) or a task model wrapping one
    (``*ForSequenceClassification``); the encoder is ``model.base_model`` when it exists.
    """
    base = getattr(model, "base_model", model)
    model_type = getattr(getattr(base, "config", None), "model_type", type(base).__name__)
    if layout is None:
        layout = LAYOUTS.get(model_type)
    candidates = (layout,) if layout is not None else _CANDIDATES
    for candidate in candidates:
        resolved = _fits(base, candidate)
        if resolved is not None:
            return base, resolved
    known = ", ".join(sorted(LAYOUTS))
    what = "its layout does not match the model" if layout is not None else "no known layout fits"
    raise ValueError(
        f"cannot adapt model type {model_type!r} ({type(base).__name__}): {what}. Known types: {known}. "
        "Pass a layout, e.g. layout=Layout(layers='encoder.layer', last_norm='output.LayerNorm') "
        "naming the module list of layers and, inside a layer, the norm fed by its last residual sum "
        "(last_norm=None for pre-LN layers)."
    )
