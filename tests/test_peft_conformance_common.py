"""Shared pieces of the PEFT conformance tests (no tests here): every kind on the four sequence-classifier families."""

from __future__ import annotations

import torch
from helpers import randomize_adapters, tiny_batch, tiny_config
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification

from pal_adapters.peft import PalPeftConfig

KINDS = {
    "pal": dict(kind="pal", num_heads=2, hidden_size=8, output_activation="gelu"),
    "pal_ffn": dict(kind="pal_ffn", hidden_size=8, ffn_layers=2),
    "low_rank": dict(kind="low_rank", hidden_size=4),
    "low_rank_serial": dict(kind="low_rank", hidden_size=4, placement="serial"),
    "lhuc": dict(kind="lhuc"),
}
CLASSIFIERS = ["bert", "roberta", "distilbert", "deberta-v2"]


def classifier(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny ``*ForSequenceClassification`` (3 labels) built with ``from_config``, in eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(arch, num_labels=3)).eval()
    return model.to(dtype)


def config(kind: str, **extra) -> PalPeftConfig:
    return PalPeftConfig(**KINDS[kind], task_type="SEQ_CLS", **extra)


def trained(arch: str, kind: str, name: str = "default", seed: int = 5, **peft_kwargs) -> PeftModel:
    """A PEFT model whose adapter and classifier copy hold random (non-identity) weights."""
    model = get_peft_model(classifier(arch), config(kind), adapter_name=name, **peft_kwargs)
    randomize(model, seed)
    return model


def randomize(model: torch.nn.Module, seed: int) -> None:
    randomize_adapters(model, std=0.3, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def logits(model, batch=None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(batch or tiny_batch())).logits


def adapter_params(model: PeftModel, name: str) -> dict[str, torch.Tensor]:
    marker = f"pal_adapters.{name}."
    return {n.split(marker, 1)[1]: p for n, p in model.named_parameters() if marker in n}


def snapshot(model: torch.nn.Module) -> dict:
    """Everything a failed operation must leave as it was: tensors, modules, flags, PEFT's state."""
    bank = dict(model.named_modules()).get("base_model.model.pal_adapters")
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modules": {n: type(m) for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "configs": sorted(getattr(model, "peft_config", {})),
        "active": list(getattr(model, "active_adapters", [])),
        "hooks": None if bank is None else len(bank._handles),
        "routing": None if bank is None else bank.router.default,
        "logits": logits(model),
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        torch.testing.assert_close(after["state"][key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    for key in ("requires_grad", "configs", "active", "hooks", "routing"):
        assert after[key] == before[key], key
    torch.testing.assert_close(after["logits"], before["logits"], rtol=0, atol=0, equal_nan=True)
