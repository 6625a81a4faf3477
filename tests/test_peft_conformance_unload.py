"""Unloading and merging through PEFT (issue 16, items 5 and 7, and what stays unsupported).

``unload()`` / ``merge_and_unload()`` work on every classifier head (RoBERTa's has no ``weight``);
``safe_merge`` refuses NaNs; and any failure, at any step, leaves the model exactly as it was.
"""

from __future__ import annotations

import pytest
import torch
from peft.utils import ModulesToSaveWrapper
from test_peft_conformance_common import (
    CLASSIFIERS,
    KINDS,
    assert_unchanged,
    classifier,
    config,
    logits,
    snapshot,
    trained,
)

import pal_adapters.peft.unload as unload_module

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
HEADS = [*CLASSIFIERS, "xlm-roberta", "electra"]  # RoBERTa, XLM-R, ELECTRA: heads without a weight


def bare_with_trained_head(arch: str, model) -> torch.nn.Module:
    """A fresh classifier holding ``model``'s active ``modules_to_save`` copy: what unloading gives back."""
    marker = ".modules_to_save.default."
    heads = {k.removeprefix("base_model.model.").replace(marker, "."): v
             for k, v in model.state_dict().items() if marker in k}
    bare = classifier(arch)
    missing = set(heads) - set(bare.state_dict())
    assert heads and not missing, missing
    bare.load_state_dict(heads, strict=False)
    return bare


# ---- 7. unload / merge_and_unload on every head --------------------------------------------------
@pytest.mark.parametrize("arch", HEADS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_unload_removes_the_adapters_and_keeps_the_trained_head(arch, kind):
    """As PEFT's ``unload``: the encoder as before ``get_peft_model``, the active head copy in place."""
    model = trained(arch, kind)
    expected = logits(bare_with_trained_head(arch, model))
    assert (logits(model) - expected).abs().max() > 1e-3  # the adapter acts
    bare = model.unload()
    assert not any(isinstance(m, ModulesToSaveWrapper) for m in bare.modules())
    assert not hasattr(bare, "pal_adapters") and not hasattr(bare, "peft_config")
    torch.testing.assert_close(logits(bare), expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", HEADS)
def test_merge_and_unload_lhuc_keeps_outputs_and_the_trained_head(arch):
    model = trained(arch, "lhuc")
    expected = logits(model)
    head = bare_with_trained_head(arch, model).state_dict()
    merged = model.merge_and_unload(safe_merge=True)
    assert not any(isinstance(m, ModulesToSaveWrapper) for m in merged.modules())
    assert not hasattr(merged, "pal_adapters") and not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=1e-5)
    for key, value in merged.state_dict().items():
        if "classifier" in key or "score" in key:
            torch.testing.assert_close(value, head[key], rtol=0, atol=0)


# ---- 5. safe_merge -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", CLASSIFIERS)
def test_safe_merge_refuses_nans_and_leaves_the_model(arch):
    model = trained(arch, "lhuc")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lhuc.theta" in n)[3] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match="NaNs detected.*default.*nothing was merged"):
        model.merge_and_unload(safe_merge=True)
    assert_unchanged(model, before)
    merged = model.merge_and_unload()  # without safe_merge, as in PEFT: merged as asked
    assert any(torch.isnan(p).any() for n, p in merged.named_parameters() if "LayerNorm" in n or "layer_norm" in n)


# ---- any failure leaves the model as it was --------------------------------------------------------
def failing_write_norms(original):
    """``write_norms`` that writes the first merged norm, then fails (the undo's writes go through)."""
    def run(folded):
        if len(folded) > 1:  # the merge itself; the undo writes its saved copies
            original(folded[:1])
            raise RuntimeError("injected failure while folding")
        return original(folded)
    return run


def fail_unwrapping(self, *args, **kwargs):
    raise KeyboardInterrupt  # not an Exception: must be undone too


@pytest.mark.parametrize("arch", HEADS)
@pytest.mark.parametrize("step", ["folding the norms", "unwrapping modules_to_save"])
def test_a_failure_at_any_step_of_merge_and_unload_leaves_the_model_as_it_was(arch, step, monkeypatch):
    model = trained(arch, "lhuc")
    model.add_adapter("other", config("lhuc"))  # two adapters, one merged
    before = snapshot(model)
    if step == "folding the norms":
        monkeypatch.setattr(unload_module, "write_norms", failing_write_norms(unload_module.write_norms))
    else:
        monkeypatch.setattr(ModulesToSaveWrapper, "unload_and_optionally_merge_module", fail_unwrapping)
    with pytest.raises(RuntimeError if step == "folding the norms" else KeyboardInterrupt):
        model.merge_and_unload()
    assert_unchanged(model, before)
    monkeypatch.undo()
    torch.testing.assert_close(logits(model.merge_and_unload()), before["logits"], rtol=0, atol=1e-5)  # still works


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_failure_in_unload_leaves_the_model_as_it_was(kind, monkeypatch):
    model = trained("roberta", kind)
    before = snapshot(model)
    monkeypatch.setattr(ModulesToSaveWrapper, "unload_and_optionally_merge_module", fail_unwrapping)
    with pytest.raises(KeyboardInterrupt):
        model.unload()
    assert_unchanged(model, before)


# ---- what stays unsupported raises and changes nothing ------------------------------------------------
@pytest.mark.parametrize("arch", CLASSIFIERS)
@pytest.mark.parametrize("kind", ["pal", "pal_ffn", "low_rank", "low_rank_serial"])
def test_merging_a_function_of_the_input_raises_and_changes_nothing(arch, kind):
    model = trained(arch, kind)
    before = snapshot(model)
    for call in (model.merge_and_unload, model.merge_adapter):
        with pytest.raises(ValueError, match="cannot be merged|not merged in place"):
            call()
        assert_unchanged(model, before)


@pytest.mark.parametrize("arch", CLASSIFIERS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_active_adapters_raise_and_change_nothing(arch, kind):
    model = trained(arch, kind)
    model.add_adapter("other", config(kind))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"cannot be combined.*\['default', 'other'\]"):
        model.base_model.set_adapter(["default", "other"])
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match=r"exactly one pal adapter; got \['default', 'other'\]"):
        model.merge_and_unload(adapter_names=["default", "other"])
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        model.base_model.set_adapter("nope")
    assert_unchanged(model, before)
