"""The op-saving forms of the adapters compute what the plain forms do, gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pal_adapters.adapters import LHUC, ProjectedSelfAttention
from pal_adapters.adapters.common import fuse_legacy_qkv


def plain_attention(attn: ProjectedSelfAttention, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Heads split and merged with unflatten/permute/transpose/reshape (no as_strided)."""
    b, t, d = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).unflatten(-1, (3, h, d // h)).permute(2, 0, 3, 1, 4).unbind(0)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    return ctx.transpose(1, 2).reshape(b, t, d)


@pytest.mark.parametrize("batch,length", [(3, 7), (4, 64)])  # small: math kernel; larger: flash kernel layout
def test_fused_qkv_attention_matches_plain_form_with_gradients(batch, length):
    torch.manual_seed(0)
    attn = ProjectedSelfAttention(24, 4, dropout=0.0, init_std=0.3).train()
    x = torch.randn(batch, length, 24, requires_grad=True)
    keep = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    keep[1, ..., length // 2:] = False
    w = torch.randn(batch, length, 24)
    got = attn(x, keep)
    grads = torch.autograd.grad((got * w).sum(), [x, attn.qkv.weight, attn.qkv.bias])
    expected = plain_attention(attn, x, keep)
    expected_grads = torch.autograd.grad((expected * w).sum(), [x, attn.qkv.weight, attn.qkv.bias])
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


def test_legacy_query_key_value_names_fuse_into_qkv_rows_in_order():
    q, k, v = (torch.full((2, 2), float(i)) for i in (1, 2, 3))
    legacy = {"t.ts.inner.0.query.weight": q, "t.ts.inner.0.key.weight": k, "t.ts.inner.0.value.weight": v,
              "t.ts.down.weight": torch.zeros(2, 5)}
    fused = fuse_legacy_qkv(legacy)
    assert sorted(fused) == ["t.ts.down.weight", "t.ts.inner.0.qkv.weight"]
    torch.testing.assert_close(fused["t.ts.inner.0.qkv.weight"], torch.cat([q, k, v]))


def test_lhuc_eval_cache_follows_every_change_of_theta():
    lhuc = LHUC(3, (0,)).eval()
    with torch.inference_mode():
        first = lhuc.scale(0)
        assert lhuc.scale(0) is first  # cached
    torch.testing.assert_close(first, torch.ones(3))
    with torch.no_grad():
        lhuc.theta["0"].fill_(1.0)  # an in-place update, like an optimiser step
        torch.testing.assert_close(lhuc.scale(0), 2 * torch.sigmoid(torch.ones(3)))
    lhuc.load_state_dict({"theta.0": torch.full((3,), -1.0)})
    with torch.no_grad():
        torch.testing.assert_close(lhuc.scale(0), 2 * torch.sigmoid(torch.full((3,), -1.0)))
    assert lhuc.scale(0).requires_grad  # with autograd on, never the cached tensor
    lhuc.train()
    with torch.no_grad():
        assert lhuc.scale(0) is not first
