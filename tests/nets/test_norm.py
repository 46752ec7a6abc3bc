"""GroupNorm with the float32 backward for CPU reduced-precision channels_last inputs."""

import pytest
import torch
import torch.nn.functional as F

from nasdm_aug.nets.norm import GroupNorm

CL = torch.channels_last


def _inputs(dtype, fmt=CL, shape=(2, 16, 8, 8)):
    x = torch.randn(shape).to(dtype).contiguous(memory_format=fmt).requires_grad_()
    dy = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)
    return x, dy


def _grads(norm, x, dy):
    x.grad = None
    for p in norm.parameters():
        p.grad = None
    y = norm(x)
    y.backward(dy)
    return y, x.grad, [p.grad for p in norm.parameters()]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_channels_last_matches_float64(affine, dtype):
    norm = GroupNorm(4, 16, affine=affine)
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x, dy = _inputs(dtype)
    y, dx, pgrads = _grads(norm, x, dy)
    assert type(y.grad_fn).__name__ == "_GroupNormFloatBackwardBackward"  # the float32-backward path ran
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=CL)
    # forward: bit-identical to the native kernel it calls
    assert torch.equal(y, F.group_norm(x.detach(), 4, norm.weight, norm.bias, norm.eps))

    ref = torch.nn.GroupNorm(4, 16, affine=affine).double()
    ref.load_state_dict(norm.state_dict())
    xr = x.detach().double().requires_grad_()
    yr, dxr, pref = _grads(ref, xr, dy.double())
    # the float32 backward leaves only the final rounding to the input's dtype
    eps = torch.finfo(dtype).eps
    assert (dx.double() - dxr).abs().max() <= 2 * eps * dxr.abs().max()
    for g, gr in zip(pgrads, pref):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), gr, rtol=1e-3, atol=1e-3 * gr.abs().max().item())


def test_backward_at_least_as_accurate_as_native():
    norm = GroupNorm(4, 32)
    x, dy = _inputs(torch.bfloat16, shape=(2, 32, 16, 16))
    _, dx, _ = _grads(norm, x, dy)
    native = torch.nn.GroupNorm(4, 32)
    native.load_state_dict(norm.state_dict())
    _, dx_native, _ = _grads(native, x, dy)
    xr = x.detach().double().requires_grad_()
    _, dxr, _ = _grads(native.double(), xr, dy.double())
    assert (dx.double() - dxr).abs().max() <= (dx_native.double() - dxr).abs().max()


@pytest.mark.parametrize(
    "dtype, fmt, grad, groups",
    [
        (torch.float32, CL, True, 4),
        (torch.bfloat16, torch.contiguous_format, True, 4),
        (torch.bfloat16, CL, False, 4),
        (torch.bfloat16, CL, True, 1),  # 16 channels per group: PyTorch's own backward is the fast one
    ],
)
def test_other_inputs_take_the_plain_path(dtype, fmt, grad, groups):
    norm = GroupNorm(groups, 16)
    x, _ = _inputs(dtype, fmt)
    with torch.set_grad_enabled(grad):
        y = norm(x)
    assert (y.grad_fn is None) == (not grad)
    assert y.grad_fn is None or type(y.grad_fn).__name__ == "NativeGroupNormBackward0"
    torch.testing.assert_close(y, F.group_norm(x, groups, norm.weight, norm.bias, norm.eps), rtol=0, atol=0)


def test_state_dict_keys_are_nn_groupnorm_keys():
    assert GroupNorm(4, 16).state_dict().keys() == torch.nn.GroupNorm(4, 16).state_dict().keys()
    assert not GroupNorm(4, 16, affine=False).state_dict()


def test_under_autocast_matches_plain_groupnorm():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=CL)
    norm = GroupNorm(4, 16)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = norm(h)
        y_plain = F.group_norm(h, 4, norm.weight, norm.bias, norm.eps)
    assert type(y.grad_fn).__name__ == "_GroupNormFloatBackwardBackward"
    assert y.dtype == y_plain.dtype == torch.bfloat16
    assert torch.equal(y, y_plain)
    y.float().square().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_chunked_backward_matches_one_chunk(monkeypatch):
    """Five samples in chunks of two (2 + 2 + 1) give the gradients of one whole-batch call."""
    from nasdm_aug.nets import norm as norm_module

    norm = GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    x, dy = _inputs(torch.bfloat16, shape=(5, 16, 8, 8))
    _, dx_one, (dw_one, db_one) = _grads(norm, x, dy)
    monkeypatch.setattr(norm_module, "_CHUNK_ELEMENTS", 2 * 16 * 8 * 8)
    _, dx_chunks, (dw_chunks, db_chunks) = _grads(norm, x, dy)
    assert dx_chunks.is_contiguous(memory_format=CL)
    torch.testing.assert_close(dx_chunks, dx_one, rtol=0, atol=2 * torch.finfo(torch.bfloat16).eps * dx_one.abs().max().item())
    torch.testing.assert_close(dw_chunks, dw_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db_chunks, db_one, rtol=1e-5, atol=1e-5)
