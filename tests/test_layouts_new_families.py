"""Longformer (pads the sequence itself) and Megatron-BERT (pre-LN BERT layers): one layout row each.

Longformer pads its input to a multiple of ``attention_window`` inside ``forward``, so its layers
see more positions than the ``attention_mask`` the adapters were given; the row says so
(``pads_sequence``) and the padding mask is extended with padding. Megatron-BERT's layer output is
its last residual sum (``last_norm=None``).
"""

from __future__ import annotations

import pytest
import torch
from helpers import hidden, randomize_adapters, tiny_batch, tiny_model
from peft import PeftModel, get_peft_model

from pal_adapters import AdapterConfig, add_pal, inject_adapters, remove_adapters
from pal_adapters.layouts import LAYOUTS, Layout
from pal_adapters.peft import PalPeftConfig

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
                                        "ignore:.*padded to be a multiple")
FAMILIES = {"longformer": dict(attention_window=8), "megatron-bert": {}}
KINDS = {
    "pal": dict(kind="pal", output_activation="gelu"),
    "pal_ffn": dict(kind="pal_ffn", ffn_layers=2),
    "low_rank": dict(kind="low_rank"),
    "lhuc": dict(kind="lhuc"),
}


def family(arch: str, seed: int = 0):
    return tiny_model(arch, seed=seed, **FAMILIES[arch])


def adapter(kind: str, placement: str = "parallel", **kw) -> AdapterConfig:
    return AdapterConfig(**KINDS[kind], placement=placement, num_heads=2, hidden_size=8, dropout=0.0, **kw)


@pytest.mark.parametrize("arch", list(FAMILIES))
@pytest.mark.parametrize("placement", ["parallel", "serial"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_identity_at_init_then_adapters_act_and_removal_restores(arch, kind, placement):
    model, batch = family(arch), tiny_batch()  # length 9: Longformer pads it to 16
    before = hidden(model, batch)
    inject_adapters(model, adapter(kind, placement), tasks=["t"])
    torch.testing.assert_close(hidden(model, batch), before, rtol=0, atol=0)
    randomize_adapters(model)
    assert (hidden(model, batch) - before).abs().max() > 1e-2
    remove_adapters(model)
    torch.testing.assert_close(hidden(model, batch), before, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["pal", "low_rank"])
def test_longformer_padding_it_adds_is_masked_for_the_pal(kind):
    """Real tokens see the same outputs whether the caller pads (mask 0) or Longformer does."""
    model = family("longformer")
    inject_adapters(model, adapter(kind), tasks=["t"])
    randomize_adapters(model)
    short = tiny_batch(batch=2, length=9, pad_rows=())
    padded = {k: torch.cat([v, torch.zeros(2, 4, dtype=v.dtype)], dim=1) for k, v in short.items()}
    torch.testing.assert_close(hidden(model, padded)[:, :9], hidden(model, short), rtol=1e-4, atol=1e-5)


def test_a_layout_that_does_not_say_it_pads_fails_naming_pads_sequence():
    model = family("longformer")
    row = Layout(layers="encoder.layer", last_norm="output.LayerNorm")  # pads_sequence left False
    inject_adapters(model, adapter("pal"), tasks=["t"], layout=row)
    with pytest.raises(RuntimeError, match=r"layers see 16 positions but the attention_mask has 9.*pads_sequence=True"):
        hidden(model, tiny_batch())


def test_megatron_parallel_adapter_joins_the_pre_ln_layer_output():
    """Reference: in the last layer, out = layer(h) + TS(h); the encoder's final norm follows."""
    model, batch = family("megatron-bert"), tiny_batch()
    seen = {}
    model.encoder.layer[1].register_forward_hook(lambda m, a, out: seen.update(h=a[0], out=out[0]))
    bare = hidden(model, batch)
    bank = inject_adapters(model, adapter("pal", layers=(1,)), tasks=["t"])
    randomize_adapters(model)
    with bank.use_task(None):  # the bare layer's input and output, read by the hook above
        torch.testing.assert_close(hidden(model, batch), bare, rtol=0, atol=0)
    keep = batch["attention_mask"].bool()[:, None, None, :]
    with torch.no_grad():
        expected = model.encoder.ln(seen["out"] + bank["t"].delta(seen["h"], 1, keep))
        torch.testing.assert_close(hidden(model, batch), expected, rtol=1e-5, atol=1e-5)
    assert LAYOUTS["megatron-bert"].pre_ln


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_predict_all_equals_one_forward_per_task(arch):
    model = add_pal(family(arch), {"a": 2, "b": 3}, adapter=adapter("pal", layers="top_half")).eval()
    randomize_adapters(model)
    batch = tiny_batch()
    together = model.predict_all(**batch)
    for task in ("a", "b"):
        torch.testing.assert_close(together[task], model(task=task, **batch).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_peft_round_trip_and_lhuc_merge(arch, tmp_path):
    batch = tiny_batch()
    model = get_peft_model(family(arch), PalPeftConfig(kind="pal", lhuc=True, num_heads=2, hidden_size=8))
    randomize_adapters(model, seed=4)
    expected = hidden(model, batch)
    model.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(family(arch), str(tmp_path), low_cpu_mem_usage=True)
    torch.testing.assert_close(hidden(loaded, batch), expected, rtol=0, atol=1e-6)
    lhuc = get_peft_model(family(arch), PalPeftConfig(kind="lhuc"))
    randomize_adapters(lhuc, seed=5)
    if LAYOUTS[arch].pre_ln:
        with pytest.raises(ValueError, match="pre-LN"):
            lhuc.merge_and_unload()
    else:
        scaled = hidden(lhuc, batch)
        torch.testing.assert_close(hidden(lhuc.merge_and_unload(), batch), scaled, rtol=0, atol=1e-5)
