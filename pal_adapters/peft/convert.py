"""The same adapter weights in both formats: pal_adapters task folders <-> PEFT adapters.

Name mapping (``<rest>`` is a ``TaskAdapter`` state-dict key, e.g. ``ts.down.weight``,
``ts.inner.3.qkv.weight``, ``lhuc.theta.3``):
- pal_adapters ``tasks/<name>/adapter.safetensors``: ``adapter.<rest>`` (and ``head.*``);
- a PEFT model: ``base_model.model.pal_adapters.<adapter>.<rest>``, saved by ``save_pretrained``
  as ``base_model.model.pal_adapters.<rest>`` in ``adapter_model.safetensors``;
- the adapter config: ``task.json``'s ``adapter`` fields are ``PalPeftConfig``'s fields of the
  same names. Heads are not converted: a pal_adapters head is dropout + one linear layer on the
  pooled or token features, PEFT's classifier is the transformers model's own (a ``modules_to_save``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from ..adapters import TaskAdapter
from ..config import TaskConfig
from ..inject import ATTRIBUTE
from ..io import (
    AdapterLoadError,
    check_fingerprint,
    check_state,
    copy_into,
    fingerprint,
    read_tensors,
    weights_checksum,
)
from ..layouts import resolve_layout
from ..model import MultiTaskModel
from ..save_format import TASK_FILE, TASK_TENSORS, read_task
from .config import PalPeftConfig
from .tuner import PalPeftModel

ADAPTER = "adapter."  # the prefix of adapter tensors in a pal_adapters task file


def from_pal_task(model: nn.Module, path: str | Path, adapter_name: str | None = None, check_weights: bool = True,
                  **peft_fields: Any) -> PeftModel:
    """Load the task saved by ``MultiTaskModel.save_task`` at ``path`` as a PEFT adapter.

    ``model``: a transformers model (wrapped by ``get_peft_model`` here) or a ``PeftModel`` of the
    ``pal`` method (the task is added with ``add_adapter``; make it active with ``set_adapter``).
    Every check of ``load_task`` that concerns the adapter runs first (fields, hashes, base model,
    names and shapes). ``peft_fields`` go to ``PalPeftConfig`` (``task_type``, ``modules_to_save``, ...).
    """
    folder = Path(path)
    saved = read_task(folder)
    hf_model = model.get_base_model() if isinstance(model, PeftModel) else model
    base, resolved = resolve_layout(hf_model)
    check_fingerprint(saved.base, fingerprint(base, resolved.num_depths), folder / TASK_FILE, check_weights=False)
    if check_weights and saved.backbone_checksum != weights_checksum(base):
        raise AdapterLoadError(f"{folder / TASK_FILE} was trained with other backbone weights than this model's; "
                               "pass check_weights=False to load it anyway")
    tensors = read_tensors(folder / TASK_TENSORS, saved.tensors_sha256)
    state = {k.removeprefix(ADAPTER): v for k, v in tensors.items() if k.startswith(ADAPTER)}
    with torch.device("meta"):  # names and shapes checked before the model changes
        expected = TaskAdapter(saved.adapter, int(base.config.hidden_size), resolved.num_depths).state_dict()
    dtype = next(p for p in base.parameters() if p.is_floating_point()).dtype
    expected = {k: v.to(dtype) if v.is_floating_point() else v for k, v in expected.items()}
    check_state(folder / TASK_TENSORS, expected, {k: v.to("meta") for k, v in state.items()})
    name = saved.name if adapter_name is None else adapter_name
    config = PalPeftConfig.from_adapter_config(saved.adapter, **peft_fields)
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
        peft_model = model
    else:
        peft_model = get_peft_model(model, config, adapter_name=name)
    copy_into(_tuner(peft_model).bank[name], state)
    return peft_model


def to_pal_task(model: PeftModel, directory: str | Path, adapter_name: str | None = None,
                task: TaskConfig | dict | int | str = 2) -> Path:
    """Write PEFT adapter ``adapter_name`` (default: the active one) as a pal_adapters task folder.

    The folder loads with ``MultiTaskModel.load_task`` onto the same base model. ``task`` defines
    the pal_adapters head (a fresh one: heads are not converted, see the module docstring).
    """
    tuner = _tuner(model)
    name = adapter_name if adapter_name is not None else model.active_adapter
    tuner.bank.check_task(name)
    config = model.peft_config[name]
    multi = MultiTaskModel(_bare_encoder_copy(tuner), {}, adapter=config.adapter_config)
    multi.add_task(name, task)
    copy_into(multi.bank[name], tuner.bank[name].state_dict())
    return multi.save_task(directory, name)


def _tuner(model: PeftModel) -> PalPeftModel:
    if not isinstance(model, PeftModel) or not isinstance(model.base_model, PalPeftModel):
        raise TypeError(f"expected a PeftModel of the 'pal' method (get_peft_model(model, PalPeftConfig(...))); "
                        f"got {type(model).__name__}")
    return model.base_model


def _bare_encoder_copy(tuner: PalPeftModel) -> nn.Module:
    """A copy of the encoder with the PEFT bank and its hooks left out (the model is unchanged)."""
    bank = tuner.bank
    bank.detach()
    delattr(tuner.model, ATTRIBUTE)
    try:
        return copy.deepcopy(bank._base_ref[0])
    finally:
        tuner.model.add_module(ATTRIBUTE, bank)
        bank.attach()
