"""``PalPeftConfig``: the PEFT config of the ``pal`` method (PAL, PAL-FFN, low-rank or LHUC).

Its adapter fields mirror ``pal_adapters.AdapterConfig`` one for one (``adapter_config`` builds
that, and every check it makes runs in ``__post_init__``); the rest is PEFT's. Unlike the core's
configs it is a *mutable* dataclass, as every PEFT config is: PEFT itself writes to it
(``inference_mode`` on loading, ``modules_to_save`` for classification models).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from peft import PeftConfig

from ..config import AdapterConfig


class PalPeftType(str, enum.Enum):
    """The ``peft_type`` of this method. A ``str`` enum of its own, equal (and hashing equal) to the
    plain string ``"PAL"`` that ``adapter_config.json`` stores, so PEFT's dispatch dicts find it by
    either; PEFT's own ``PeftType`` enum is left untouched (see ``pal_adapters/peft/__init__.py``)."""

    PAL = "PAL"


PEFT_TYPE = PalPeftType.PAL
ADAPTER_FIELDS = tuple(f.name for f in dataclasses.fields(AdapterConfig))


@dataclass
class PalPeftConfig(PeftConfig):
    """PEFT config for PAL / PAL-FFN / low-rank / LHUC adapters (fields as in ``AdapterConfig``).

    Attributes (PEFT's own):
        modules_to_save: modules trained and saved in full next to the adapter, e.g. a classifier
            (``["classifier"]``); ``task_type="SEQ_CLS"`` adds ``classifier``/``score`` itself.
        layout: not a field: the encoder's layout is detected, as for ``add_pal``.
    """

    kind: str = field(default="pal", metadata={"help": "pal, pal_ffn, low_rank or lhuc"})
    lhuc: bool = field(default=False, metadata={"help": "also scale TS(h) by a learnt LHUC vector"})
    placement: str = field(default="parallel", metadata={"help": "parallel or serial"})
    layers: str | list[int] | tuple[int, ...] = field(
        default="all", metadata={"help": "'all', 'top_half', 'bottom_half' or layer indices"})
    hidden_size: int | None = field(default=None, metadata={"help": "d_s; None derives it from d_m"})
    num_heads: int = field(default=6, metadata={"help": "heads of the attention in d_s (pal)"})
    activation: str = field(default="gelu", metadata={"help": "g of low_rank, hidden activation of pal_ffn"})
    output_activation: str = field(default="identity", metadata={"help": "applied after V^D"})
    ffn_layers: int = field(default=1, metadata={"help": "layers of the pal_ffn network (1 or 2)"})
    dropout: float = field(default=0.1, metadata={"help": "attention-probability / pal_ffn dropout"})
    init: str = field(default="identity", metadata={"help": "identity (V^D = 0, theta = 0) or random"})
    init_std: float = field(default=0.02, metadata={"help": "std of the normal init"})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "modules besides the adapter to train and save, e.g. the classifier"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if isinstance(self.layers, list):  # JSON gives lists; AdapterConfig keeps tuples
            self.layers = tuple(self.layers)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if self.adapter_config.method.on_top:  # builds the AdapterConfig, raising on any bad field
            raise ValueError(
                f"kind={self.kind!r} is a method on top of the encoder, which the PEFT plugin does not offer: "
                "its conformance suite covers adapters inside layers only, and under PEFT the task head is "
                "PEFT's modules_to_save, not a head of the task; use pal_adapters.add_pal (docs/model.md)")

    @property
    def adapter_config(self) -> AdapterConfig:
        """The core config these fields describe (validated: a bad value raises naming the valid ones)."""
        return AdapterConfig(**{name: getattr(self, name) for name in ADAPTER_FIELDS})

    @classmethod
    def from_adapter_config(cls, config: AdapterConfig, **peft_fields) -> PalPeftConfig:
        """The PEFT config of a core ``AdapterConfig`` (``peft_fields``: task_type, modules_to_save, ...)."""
        return cls(**{name: getattr(config, name) for name in ADAPTER_FIELDS}, **peft_fields)
