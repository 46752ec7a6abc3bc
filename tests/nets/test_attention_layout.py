"""AttentionBlock hands scaled_dot_product_attention contiguous q / k / v (last-dim stride 1, which
CUDA's fused kernels need) in both memory layouts, with the results of the attention it computed before."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nasdm_aug.nets import build_model, get_preset
from nasdm_aug.nets.layers import AttentionBlock

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def sdpa_inputs(monkeypatch):
    """Record the q, k, v of every scaled_dot_product_attention call (and still compute it)."""
    seen: list[tuple[torch.Tensor, ...]] = []
    real = F.scaled_dot_product_attention

    def recorder(q, k, v, *args, **kwargs):
        seen.append((q, k, v))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorder)
    return seen


def _block(channels: int = 32, head_channels: int = 8) -> AttentionBlock:
    torch.manual_seed(0)
    block = AttentionBlock(channels, head_channels, groups=4).eval()
    with torch.no_grad():  # the output projection starts at zero: give it weights so the attention shows
        block.proj.weight.normal_(0.0, 0.2)
    return block


def _strided_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The attention as computed before q / k / v were made contiguous: transposed views."""
    n, c, hgt, wid = x.shape
    qkv = block.qkv(block.norm(x)).reshape(n, 3, block.heads, c // block.heads, hgt * wid)
    q, k, v = qkv.transpose(-1, -2).unbind(1)
    out = F.scaled_dot_product_attention(q, k, v)
    return x + block.proj(out.transpose(-1, -2).reshape(n, c, hgt, wid))


def _float64_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out in float64, from the block's own norm and qkv output."""
    n, c, hgt, wid = x.shape
    qkv = block.qkv(block.norm(x)).double().reshape(n, 3, block.heads, c // block.heads, hgt * wid)
    q, k, v = (a.transpose(-1, -2) for a in qkv.unbind(1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(-1, -2).reshape(n, c, hgt, wid)
    proj = F.conv2d(out, block.proj.weight.double(), block.proj.bias.double())
    return x.double() + proj


@pytest.mark.parametrize("layout", list(FORMATS))
def test_attention_gets_contiguous_qkv_and_the_same_result(sdpa_inputs, layout):
    fmt = FORMATS[layout]
    block = _block().to(memory_format=fmt)
    x = torch.randn(2, 32, 8, 6, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=fmt)
    with torch.no_grad():
        y = block(x)
        assert len(sdpa_inputs) == 1
        for a in sdpa_inputs[0]:
            assert a.shape == (2, 4, 48, 8) and a.stride(-1) == 1 and a.is_contiguous()
        before = _strided_attention(block, x)
        exact = _float64_attention(block, x)
    if layout == "channels_last":  # the views already had stride 1: the same kernel, the same bits
        assert torch.equal(y, before)
    else:  # the fused CPU kernel now applies in place of the math path: float rounding apart
        torch.testing.assert_close(y, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("layout", list(FORMATS))
def test_a_unet_in_either_layout_gives_attention_contiguous_inputs(sdpa_inputs, layout):
    fmt = FORMATS[layout]
    config = get_preset("patch", "tiny", image_size=16, base_channels=16, channel_mults=(1, 2),
                        attention_resolutions=(8,), head_channels=16, norm_groups=4, spade_hidden=16)
    torch.manual_seed(0)
    model = build_model(config).eval().to(memory_format=fmt)
    x = torch.randn(1, config.in_channels, 16, 16).contiguous(memory_format=fmt)
    cond = torch.zeros(1, config.n_types + 2, 16, 16)
    cond[:, 0] = 1
    with torch.no_grad():
        model(x, torch.tensor([3]), cond.contiguous(memory_format=fmt))
    assert sdpa_inputs, "the preset has no attention layer"
    assert all(a.stride(-1) == 1 and a.is_contiguous() for qkv in sdpa_inputs for a in qkv)
