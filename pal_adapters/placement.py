"""Where an adapter acts inside a layer: the placement table, one row per (placement, pre-LN).

A layer offers two points, each a forward hook of sites.py:
- ``Stage.RESIDUAL``: the input of the layer's last norm, i.e. its last residual sum (post-LN
  layers only; the reference code's ``self.output(intermediate, attention_output + TS)``);
- ``Stage.OUTPUT``: the layer's output. In a pre-LN layer it *is* the last residual sum.

A row says at which point a task's adapter changes the value and what its TS reads there: the
layer input ``h_l`` (parallel) or the value at that point (serial). LHUC alone (a method without
TS) scales the layer output whatever the placement (``SCALE``). ``predict_all`` replicates the
batch where the last residual sum is seen (``last_residual``): everything below reads only the
shared layer input, and every row of the table acts at or after that point. The methods on top
(``placement="top"``) map the output of the last layer, ``x ↦ TS(x)`` (``maps``): with only them,
``predict_all`` replicates after the whole encoder (``first_point``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Stage(enum.Enum):
    """A point inside a layer where adapters act (see the module docstring)."""

    RESIDUAL = "residual"
    OUTPUT = "output"


@dataclass(frozen=True)
class SiteRule:
    """Where one task's adapter acts in a layer.

    Attributes:
        acts_at: the point whose value ``x`` the adapter changes.
        reads_input: TS reads the layer input ``h_l`` (``x + TS(h_l)``, parallel) rather than
            ``x`` itself (``x + TS(x)``, serial).
        scales: no TS: ``x · 2σ(θ)`` (LHUC alone).
        maps: TS returns the new value itself, ``x ↦ TS(x)`` (a method on top, at the last layer).
    """

    acts_at: Stage
    reads_input: bool = False
    scales: bool = False
    maps: bool = False


PLACEMENTS: dict[tuple[str, bool], SiteRule] = {
    # (placement, pre_ln): parallel TS joins the last residual sum, serial TS maps the output.
    ("parallel", False): SiteRule(Stage.RESIDUAL, reads_input=True),
    ("parallel", True): SiteRule(Stage.OUTPUT, reads_input=True),
    ("serial", False): SiteRule(Stage.OUTPUT),
    ("serial", True): SiteRule(Stage.OUTPUT),
    # on top: the task's function maps the encoder's last layer output (its adapter's only depth).
    ("top", False): SiteRule(Stage.OUTPUT, maps=True),
    ("top", True): SiteRule(Stage.OUTPUT, maps=True),
}
SCALE = SiteRule(Stage.OUTPUT, scales=True)


def site_rules(pre_ln: bool) -> dict[str, SiteRule]:
    """placement -> its row for layers that are (``pre_ln``) or are not pre-LN."""
    return {placement: rule for (placement, pre), rule in PLACEMENTS.items() if pre == pre_ln}


def last_residual(pre_ln: bool) -> Stage:
    """The point where a layer's last residual sum is seen: where ``predict_all`` replicates."""
    return Stage.OUTPUT if pre_ln else Stage.RESIDUAL


def first_point(placement: str, depths: frozenset[int]) -> tuple[int, bool]:
    """``(depth, after_layer)``: the earliest point where a task's adapter may change a value.
    ``predict_all`` replicates the batch at the earliest over its tasks: inside layer ``depth``
    where its last residual sum is seen, or, when ``after_layer`` (a method on top), after the
    whole layer, so that layer runs once for all tasks."""
    return min(depths), placement == "top"


def earliest(points: list[tuple[int, bool]]) -> tuple[int, bool]:
    """The first of ``points`` in forward order (inside a layer comes before after it)."""
    return min(points)
