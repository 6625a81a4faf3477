"""What PEFT's own test battery asks of any PEFT method, asked of ``pal`` (issue 16, items 1-4, 6, 8).

Every kind (pal, pal_ffn, low_rank parallel and serial, lhuc) on tiny BERT, RoBERTa, DistilBERT and
DeBERTa-v2 sequence classifiers; weights are random so that nothing passes by being identity.
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers import tiny_batch
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
from peft.peft_model import get_layer_status, get_model_status
from test_peft_conformance_common import (
    CLASSIFIERS,
    KINDS,
    adapter_params,
    classifier,
    config,
    logits,
    randomize,
    trained,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
EVERY = pytest.mark.parametrize("arch", CLASSIFIERS)
EVERY_KIND = pytest.mark.parametrize("kind", list(KINDS))
BANK = "base_model.model.pal_adapters"


# ---- 1. low_cpu_mem_usage ---------------------------------------------------------------------
@EVERY
@EVERY_KIND
def test_low_cpu_mem_usage_loads_the_saved_weights_off_meta(arch, kind, tmp_path):
    model = trained(arch, kind)
    expected = logits(model)
    model.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(classifier(arch), str(tmp_path), low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)
    result = loaded.load_adapter(str(tmp_path), adapter_name="other", low_cpu_mem_usage=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    saved = adapter_params(model, "default")
    for key, value in adapter_params(loaded, "other").items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    loaded.set_adapter("other")
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)


def test_low_cpu_mem_usage_without_weights_leaves_the_adapter_on_meta():
    """As PEFT documents: adapters created empty, for weights to be assigned next."""
    model = get_peft_model(classifier("bert"), config("pal"), low_cpu_mem_usage=True)
    assert {p.device.type for p in adapter_params(model, "default").values()} == {"meta"}


# ---- 2. autocast_adapter_dtype -------------------------------------------------------------------
@EVERY
@EVERY_KIND
def test_autocast_keeps_adapters_fp32_on_a_bf16_base(arch, kind, tmp_path):
    fp32 = trained(arch, kind)
    fp32.save_pretrained(str(tmp_path))
    reference = logits(fp32)
    bf16 = PeftModel.from_pretrained(classifier(arch, dtype=torch.bfloat16), str(tmp_path))
    assert {p.dtype for p in adapter_params(bf16, "default").values()} == {torch.float32}
    got = logits(bf16)
    assert got.dtype == torch.bfloat16  # the adapters' outputs join the encoder in its dtype
    torch.testing.assert_close(got.float(), reference, rtol=0.05, atol=0.1)
    bare = logits(PeftModel.from_pretrained(classifier(arch, dtype=torch.bfloat16), str(tmp_path),
                                            autocast_adapter_dtype=False))
    torch.testing.assert_close(bare.float(), reference, rtol=0.05, atol=0.1)
    kept = get_peft_model(classifier(arch, dtype=torch.bfloat16), config(kind), autocast_adapter_dtype=False)
    assert {p.dtype for p in adapter_params(kept, "default").values()} == {torch.bfloat16}


@pytest.mark.parametrize("kind", ["pal", "lhuc"])
def test_fp32_adapters_on_bf16_base_get_fp32_gradients(kind):
    model = get_peft_model(classifier("bert", dtype=torch.bfloat16), config(kind))
    randomize(model, seed=3)
    model.add_adapter("other", config(kind))  # added adapters are upcast too
    model(**tiny_batch()).logits.float().pow(2).sum().backward()
    grads = {n: p.grad for n, p in adapter_params(model, "default").items()}
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads.values())
    assert {p.dtype for p in adapter_params(model, "other").values()} == {torch.float32}


# ---- 3. the bank has no weight or bias -------------------------------------------------------------
@EVERY
@EVERY_KIND
def test_bank_has_no_weight_or_bias_and_module_scans_work(arch, kind):
    model = trained(arch, kind)
    bank = model.base_model.bank
    assert not hasattr(bank, "weight") and not hasattr(bank, "bias")
    assert getattr(bank, "weight", None) is None
    weights = [m.weight for m in model.modules() if hasattr(m, "weight")]  # what generic tooling does
    assert all(isinstance(w, torch.Tensor) for w in weights)
    for name in ("weight", "bias", "base_layer", "__base__"):
        with pytest.raises(ValueError, match=f"{name!r} is reserved"):
            model.add_adapter(name, config(kind))
        assert name not in model.peft_config


# ---- 4. set_requires_grad ----------------------------------------------------------------------------
@EVERY
@EVERY_KIND
def test_set_requires_grad_switches_one_adapter_and_refuses_unknown_names(arch, kind):
    model = trained(arch, kind)
    model.add_adapter("other", config(kind))
    assert not any(p.requires_grad for p in adapter_params(model, "other").values())
    model.set_requires_grad("other")
    assert all(p.requires_grad for p in adapter_params(model, "other").values())
    assert all(p.requires_grad for p in adapter_params(model, "default").values())  # untouched
    model.set_requires_grad(["default", "other"], requires_grad=False)
    assert not any(p.requires_grad for p in model.base_model.bank.parameters())
    with pytest.raises(KeyError, match=r"unknown task 'nope'.*\['default', 'other'\]"):
        model.set_requires_grad("nope")


# ---- 6. layer and model status -------------------------------------------------------------------------
@EVERY
@EVERY_KIND
def test_layer_and_model_status_report_the_bank(arch, kind):
    model = trained(arch, kind)
    model.add_adapter("other", config(kind))
    status = {s.name: s for s in get_layer_status(model)}
    bank = status["model.pal_adapters"]
    assert bank.requires_grad == {"default": True, "other": False}
    assert bank.devices == {"default": ["cpu"], "other": ["cpu"]}
    assert bank.available_adapters == ["default", "other"] and bank.active_adapters == ["default"]
    first = next(iter(adapter_params(model, "default").values()))
    first.requires_grad_(False)  # a partly frozen adapter
    assert {s.name: s for s in get_layer_status(model)}["model.pal_adapters"].requires_grad["default"] == "irregular"
    assert get_model_status(model).requires_grad["default"] == "irregular"
    assert get_model_status(model).devices["other"] == ["cpu"]


# ---- 8. the prefix is in the names of the adapter's parameters ----------------------------------------------
@EVERY
@EVERY_KIND
def test_prefix_marks_every_adapter_parameter_and_nothing_else(arch, kind):
    model = trained(arch, kind)
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING[model.peft_config["default"].peft_type]
    assert prefix == model.base_model.prefix
    bank_names = {f"{BANK}.{n}" for n, _ in model.base_model.bank.named_parameters()}
    assert {n for n, _ in model.named_parameters() if prefix in n} == bank_names
    # load_adapter's missing-key report keeps keys with ``prefix in key and adapter_name in key``
    keys = model.state_dict().keys()
    assert {k for k in keys if prefix in k and "default" in k} == {k for k in bank_names if ".default." in k}
    # transformers' adapter-key renaming: (<prefix>[^.]*) -> \1.<adapter>
    saved = [k.replace(".default.", ".", 1) for k in bank_names]
    assert {re.sub(rf"({re.escape(prefix)}[^\.]*)", r"\1.default", k) for k in saved} == bank_names


@EVERY
@EVERY_KIND
def test_training_updates_exactly_the_prefixed_and_saved_modules(arch, kind):
    """PEFT's ``test_only_params_are_updated``: after steps, a parameter changed iff it is the adapter's
    (``prefix in name``) or a ``modules_to_save`` copy."""
    model = trained(arch, kind)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(**tiny_batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
        optimizer.step()
    prefix = model.base_model.prefix
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (prefix in name or "modules_to_save" in name), name
