"""The injected BERT computes the reference code's formulas (GUIDE §1), transcribed independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_adapters, tiny_batch, tiny_model

from pal_adapters import PRESETS, inject_adapters, remove_adapters


def attention(x, q_lin, k_lin, v_lin, heads, ext_mask):
    """Plain multi-head attention, no output projection, as in the reference BERTSelfAttention."""
    b, t, d = x.shape
    hd = d // heads

    def split(y):
        return y.view(b, t, heads, hd).permute(0, 2, 1, 3)

    q, k, v = split(q_lin(x)), split(k_lin(x)), split(v_lin(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + ext_mask
    ctx = torch.softmax(scores, dim=-1) @ v
    return ctx.permute(0, 2, 1, 3).reshape(b, t, d)


def qkv_projections(attn):
    """Our fused ``qkv`` Linear(d_s, 3·d_s) as the reference's three Linear(d_s, d_s): rows Q, K, V."""
    d = attn.qkv.out_features // 3
    w, b = attn.qkv.weight, attn.qkv.bias
    return [lambda x, i=i: F.linear(x, w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3)]


def layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def reference_forward(model, task, batch, lhuc: bool):
    """BERT encoder with PALs exactly as Bert-n-Pals ``BERTLayer.forward`` (mult=True, pals=True)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
    cfg = model.config
    pal = task.ts
    h = model.embeddings(input_ids=ids)
    for depth, layer in enumerate(model.encoder.layer):
        sa, so = layer.attention.self, layer.attention.output
        ctx = attention(h, sa.query, sa.key, sa.value, cfg.num_attention_heads, ext)
        attention_output = layer_norm(so.dense(ctx) + h, so.LayerNorm)
        intermediate = F.gelu(layer.intermediate.dense(attention_output))
        ffn = layer.output.dense(intermediate)
        a = pal.inner[str(depth)]
        extra = F.gelu(pal.up(attention(pal.down(h), *qkv_projections(a), 6, ext)))  # TS(h_l)
        if lhuc:
            extra = extra * 2.0 * torch.sigmoid(task.lhuc.theta[str(depth)])
        h = layer_norm(ffn + attention_output + extra, layer.output.LayerNorm)
    return h


@pytest.mark.parametrize("preset", ["pal", "pal_lhuc"])
def test_injected_bert_matches_reference_pal_formulas(preset):
    model = tiny_model("bert")
    bank = inject_adapters(model, PRESETS[preset].replace(hidden_size=12, dropout=0.0, output_activation="gelu"),
                          tasks=["t"])  # the reference code's GELU after V^D
    try:
        randomize_adapters(model, std=0.4)
        batch = tiny_batch(batch=3, length=8, pad_rows=(0, 2))
        with torch.no_grad():
            expected = reference_forward(model, bank["t"], batch, lhuc=preset == "pal_lhuc")
            got = model(**batch).last_hidden_state
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-5)
        with torch.no_grad(), bank.use_task(None):
            bare = model(**batch).last_hidden_state
        assert (got - bare)[real].abs().max() > 1e-2  # the adapters really act
    finally:
        remove_adapters(model)


def test_pal_shares_projections_across_layers_but_not_tasks():
    model = tiny_model("bert")
    bank = inject_adapters(model, "pal", tasks=["a", "b"])
    try:
        names = [n for n, _ in bank.named_parameters()]
        assert [n for n in names if n.startswith("a.ts.down")] == ["a.ts.down.weight", "a.ts.down.bias"]
        assert bank["a"].ts.down is not bank["b"].ts.down
        assert {n.split(".")[3] for n in names if n.startswith("a.ts.inner.")} == {"0", "1"}
    finally:
        remove_adapters(model)
