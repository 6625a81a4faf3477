"""PEFT plugin: ``import pal_adapters.peft`` registers the PEFT method ``pal`` (PAL / PAL-FFN /
low-rank / LHUC, one method with a ``kind`` field, since PEFT refuses to mix types in a model).

Registration. PEFT 0.21's ``register_peft_method`` accepts only names already in its ``PeftType``
enum (PEFT issue #2273, PR #2282). We try it first (a future PEFT that accepts third-party names
is used as is); when it refuses, we make the same three entries it would make in PEFT's public
dispatch dicts (``peft.mapping.PEFT_TYPE_TO_{CONFIG,TUNER,PREFIX}_MAPPING``), keyed by our own
``str`` enum ``PalPeftType.PAL`` (equal to the string ``"PAL"`` saved in ``adapter_config.json``).
PEFT's ``PeftType`` enum is not modified. Every PEFT path we use dispatches through those dicts
(``get_peft_model``, ``PeftModel.from_pretrained``, ``get_peft_model_state_dict``,
``set_peft_model_state_dict``); the risk is that a later PEFT validates ``peft_type`` against its
enum or renames the dicts: tests/test_peft.py then fails (it does not skip). Tested range: the
``peft`` pin in pyproject.toml.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from .config import PEFT_TYPE, PalPeftConfig, PalPeftType
from .convert import from_pal_task, to_pal_task
from .tuner import PREFIX, PalPeftModel

METHOD = "pal"


def register() -> None:
    """Make ``PalPeftConfig`` usable with ``get_peft_model``/``PeftModel.from_pretrained`` (idempotent)."""
    if PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is PalPeftModel:
        return
    try:
        register_peft_method(name=METHOD, config_cls=PalPeftConfig, model_cls=PalPeftModel, prefix=PREFIX)
    except ValueError as err:  # PEFT <= 0.21: "Unknown PEFT type PAL, please add an entry to ... PeftType"
        if "Unknown PEFT type" not in str(err):
            raise
        if PEFT_TYPE in PEFT_TYPE_TO_CONFIG_MAPPING or PREFIX in PEFT_TYPE_TO_PREFIX_MAPPING.values():
            taken = f"the type {PEFT_TYPE.value!r} or the prefix {PREFIX!r}"
            raise KeyError(f"another PEFT method already uses {taken}") from err
        PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX
        PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = PalPeftConfig
        PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = PalPeftModel


register()

__all__ = ["METHOD", "PEFT_TYPE", "PalPeftConfig", "PalPeftModel", "PalPeftType", "from_pal_task", "register",
           "to_pal_task"]
