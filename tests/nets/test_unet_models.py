"""PatchUNet and MaskUNet: shapes, null condition and its dropout, gradients, configs and presets."""

from __future__ import annotations

import json

import pytest
import torch

from nasdm_aug.nets import ConditionPyramid, MaskUNet, PatchUNet, SPADEGroupNorm, UNetConfig, build_model, get_preset
from nasdm_aug.utils import InputError

SMALL = dict(image_size=32, base_channels=16, channel_mults=(1, 2), attention_resolutions=(16,), head_channels=16,
             norm_groups=4, spade_hidden=16)  # fmt: skip


def _small(kind: str, **kw) -> UNetConfig:
    return get_preset(kind, "tiny", **{**SMALL, **kw})


def _cond(config: UNetConfig, n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if config.kind == "mask":
        return (torch.rand(n, config.n_types, generator=g) > 0.5).float()
    cls = torch.randint(0, config.n_types + 1, (n, size, size), generator=g)
    onehot = torch.nn.functional.one_hot(cls, config.n_types + 1).permute(0, 3, 1, 2).float()
    return torch.cat([onehot, (torch.rand(n, 1, size, size, generator=g) > 0.8).float()], 1)


def _unzero(model: torch.nn.Module) -> torch.nn.Module:
    """Give zero-initialised layers random weights, so every branch changes the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.05)
    return model


CASES = [  # kind, overrides, batch, size, expected output channels
    ("patch", {}, 2, 32, 6),
    ("patch", {"n_types": 4, "num_res_blocks": 2}, 1, 32, 6),
    ("patch", {"out_channels": 3}, 1, 16, 3),
    ("mask", {}, 2, 32, 18),
    ("mask", {"n_types": 4, "channel_mults": (1, 1, 2), "attention_resolutions": (8,)}, 3, 32, 14),
]


@pytest.mark.parametrize("kind, overrides, batch, size, out_ch", CASES)
def test_output_shape(kind, overrides, batch, size, out_ch):
    config = _small(kind, **overrides)
    model = build_model(config).eval()
    x = torch.randn(batch, config.in_channels, size, size)
    with torch.no_grad():
        y = model(x, torch.randint(0, 1000, (batch,)), _cond(config, batch, size))
    assert y.shape == (batch, out_ch, size, size)
    assert isinstance(model, PatchUNet if kind == "patch" else MaskUNet)


@pytest.mark.parametrize("kind, in_ch, out_ch, params", [("patch", 3, 6, 500_509_446), ("mask", 9, 18, 420_514_322)])
def test_paper_preset_size(kind, in_ch, out_ch, params):
    config = get_preset(kind, "paper")
    assert (config.base_channels, config.channel_mults, config.num_res_blocks) == (256, (1, 1, 2, 3, 4), 2)
    assert (config.attention_resolutions, config.head_channels, config.image_size) == ((32, 16, 8), 64, 128)
    with torch.device("meta"):  # no memory, no time: only the parameter table
        model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) == params
    assert (model.config.in_channels, model.config.out_channels) == (in_ch, out_ch)


@pytest.mark.parametrize("kind, out_ch, flops", [("patch", 6, 1_830_131_859_456), ("mask", 18, 1_230_429_511_680)])
def test_paper_preset_runs_on_the_meta_device(kind, out_ch, flops):
    # the meta device counts FLOPs with no memory or time (benchmarks/bench_nets.py --part size);
    # autocast does not know that device type, and asking it raised inside the forward
    from torch.utils.flop_counter import FlopCounterMode

    config = get_preset(kind, "paper")
    with torch.device("meta"):
        model = build_model(config).eval()
        s = config.image_size
        cond = torch.randn(2, config.cond_channels, s, s) if kind == "patch" else torch.rand(2, config.n_types)
        with FlopCounterMode(display=False) as counter:
            y = model(torch.randn(2, config.in_channels, s, s), torch.zeros(2), cond)
    assert y.shape == (2, out_ch, s, s) and y.device.type == "meta"
    assert counter.get_total_flops() == flops  # 915 / 615 GFLOP a sample


@pytest.mark.slow
def test_paper_patch_forward_batch1():
    config = get_preset("patch", "paper")
    model = build_model(config).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 128, 128), torch.tensor([10]), _cond(config, 1, 128))
    assert y.shape == (1, 6, 128, 128)


@pytest.mark.parametrize("kind", ["patch", "mask"])
def test_condition_dropout_only_in_training(kind):
    config = _small(kind, cond_drop_prob=0.5)
    model = _unzero(build_model(config))
    n = 16
    x, t, cond = torch.randn(n, config.in_channels, 16, 16), torch.full((n,), 500), _cond(config, n, 16)
    model.eval()
    with torch.no_grad():
        y_cond, y_null = model(x, t, cond), model(x, t, model.null_condition(cond))
        torch.manual_seed(0)
        model.train()
        y_train = model(x, t, cond)
    per_sample = lambda a, b: torch.isclose(a, b, atol=1e-5).flatten(1).all(1)  # noqa: E731
    dropped, kept = per_sample(y_train, y_null), per_sample(y_train, y_cond)
    assert not (per_sample(y_cond, y_null)).any()  # the condition matters
    assert (dropped ^ kept).all() and 2 <= int(dropped.sum()) <= 14  # each sample one or the other, both occur
    model.eval()  # eval mode never drops
    with torch.no_grad():
        assert torch.allclose(model(x, t, cond), y_cond, atol=1e-6)


def test_null_conditions():
    patch, mask = build_model(_small("patch")), build_model(_small("mask"))
    c = _cond(patch.config, 2, 8)
    assert torch.equal(patch.null_condition(c), torch.zeros_like(c))
    y = torch.tensor([[0.0, 1, 0, 0, 1, 0]])
    assert torch.equal(mask.null_condition(y), torch.full_like(y, -1.0))
    assert mask.cond_drop_prob == patch.cond_drop_prob == 0.2


@pytest.mark.parametrize("kind", ["patch", "mask"])
def test_gradients_reach_every_parameter(kind):
    config = _small(kind)
    model = _unzero(build_model(config)).eval()
    n = 2
    cond = _cond(config, n, 16)
    if kind == "mask":  # one null row, so the learned null embedding takes part
        cond = torch.cat([cond, model.null_condition(cond[:1])])
        n = 3
    model(torch.randn(n, config.in_channels, 16, 16), torch.tensor([3, 700, 50][:n]), cond).square().mean().backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent


def test_bf16_autocast_and_channels_last():
    config = _small("patch")
    model = _unzero(build_model(config)).eval()
    x, t, cond = torch.randn(2, 3, 32, 32), torch.tensor([1, 999]), _cond(config, 2, 32)
    with torch.no_grad():
        ref = model(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, cond)
        model = model.to(memory_format=torch.channels_last)
        cl = model(x.to(memory_format=torch.channels_last), t, cond.to(memory_format=torch.channels_last))
    assert torch.isfinite(low).all() and (low.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert torch.allclose(cl, ref, atol=1e-4)


def test_bf16_channels_last_training_gradients_follow_fp32():
    """A bf16 channels_last backward (float32 group-norm backward on CPU) gives the fp32 gradients."""
    config = _small("patch")
    model = _unzero(build_model(config)).eval().to(memory_format=torch.channels_last)
    cl = torch.channels_last
    x, t = torch.randn(2, 3, 32, 32).contiguous(memory_format=cl), torch.tensor([1, 999])
    cond = _cond(config, 2, 32).contiguous(memory_format=cl)

    def grads(bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, cond)
        out.float().square().mean().backward()
        return out, torch.cat([p.grad.flatten() for p in model.parameters()])

    _, ref = grads(False)
    out, low = grads(True)
    seen, stack = set(), [out.grad_fn]
    while stack:  # the autograd graph holds the float32-backward group norms
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    assert any(type(n).__name__ == "_GroupNormFloatBackwardBackward" for n in seen)
    cos = torch.nn.functional.cosine_similarity(low, ref, dim=0)
    assert cos > 0.999 and (low.norm() / ref.norm() - 1).abs() < 0.02, (cos, low.norm(), ref.norm())


def test_spade_group_norm_closed_form():
    norm = SPADEGroupNorm(8, 3, groups=2, hidden=4)
    torch.nn.init.zeros_(norm.gamma_beta.weight)
    with torch.no_grad():
        norm.gamma_beta.bias.copy_(torch.cat([torch.full((8,), 1.0), torch.full((8,), 0.5)]))  # gamma 1, beta 0.5
    x = torch.randn(2, 8, 4, 4)
    want = torch.nn.functional.group_norm(x, 2) * 2 + 0.5
    assert torch.allclose(norm(x, torch.rand(2, 3, 16, 16)), want, atol=1e-5)


def test_spade_modulation_gradients():
    from nasdm_aug.nets.spade import _Modulate

    g = torch.Generator().manual_seed(0)
    normed = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    gb = torch.randn(2, 6, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(_Modulate.apply, (normed, gb))
    gamma, beta = gb.chunk(2, dim=1)
    assert torch.allclose(_Modulate.apply(normed, gb), normed * (1 + gamma) + beta)
    cl = gb.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    _Modulate.apply(normed, cl).sum().backward()
    assert torch.allclose(cl.grad, torch.cat([normed.detach(), torch.ones_like(normed)], 1))


def test_condition_pyramid_matches_per_call_resize():
    norm = _unzero(SPADEGroupNorm(8, 3, groups=2, hidden=4))
    cond = torch.rand(2, 3, 16, 16)
    pyramid = ConditionPyramid(cond)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(norm(x, pyramid), norm(x, cond))
    assert pyramid.at((4, 4)) is pyramid.at(torch.Size([4, 4]))  # resized once per size
    assert pyramid.at((16, 16)) is cond  # full size: no copy
    low = ConditionPyramid(cond, torch.bfloat16, torch.channels_last).at((8, 8))
    assert low.dtype == torch.bfloat16 and low.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(low.float(), torch.nn.functional.interpolate(cond, size=(8, 8), mode="nearest").bfloat16().float())


def test_wrong_condition_shape_raises():
    model = build_model(_small("patch"))
    with pytest.raises(ValueError, match=r"cond of shape \[1, 8, 16, 16\]"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.zeros(1, 7, 16, 16))
    with pytest.raises(ValueError, match="kind 'mask', got 'patch'"):
        MaskUNet(_small("patch"))


ILL_CASES = [
    {"kind": "video"},
    {"base_channels": 0},
    {"channel_mults": ()},
    {"channel_mults": (1, 0)},
    {"out_channels": 5},
    {"image_size": 30},  # not divisible by 2**2
    {"attention_resolutions": (7,)},
    {"head_channels": 24},  # 32 is not a multiple of 24
    {"norm_groups": 5},
    {"dropout": 1.0},
    {"cond_drop_prob": -0.1},
    {"n_types": 0},
]


@pytest.mark.parametrize("overrides", ILL_CASES)
def test_invalid_config_raises(overrides):
    with pytest.raises(ValueError):
        get_preset("patch", "tiny").replace(**overrides)


def test_mask_channels_must_match_types():
    with pytest.raises(ValueError, match=r"mask_channels\(6\) = 9"):
        UNetConfig(kind="mask", in_channels=8, out_channels=16)
    assert get_preset("mask", "tiny", n_types=4).in_channels == 7


def test_config_json_round_trip(tmp_path):
    config = get_preset("mask", "paper", n_types=5, dropout=0.1)
    assert UNetConfig.from_dict(json.loads(config.to_json())) == config
    config.save(tmp_path / "config.json")
    assert UNetConfig.load(tmp_path / "config.json") == config


def test_unknown_preset_lists_names():
    with pytest.raises(InputError, match="paper, tiny"):
        get_preset("patch", "huge")


def _gamma_beta_calls(model: torch.nn.Module) -> list:
    calls: list = []
    for m in model.modules():
        if isinstance(m, SPADEGroupNorm):
            m.gamma_beta.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_reuse_condition_computes_spade_maps_once_per_condition():
    """Inside reuse_condition a no-grad forward given the condition it saw before skips the SPADE
    convolutions and returns exactly the output of a fresh forward; a changed condition, a forward
    with gradients, a zero budget and the exit all stop the reuse."""
    config = _small("patch")
    model = _unzero(build_model(config)).eval()
    calls = _gamma_beta_calls(model)
    x, t, cond = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), _cond(config, 2, 32)
    x2, t2 = x * 0.5, torch.tensor([10, 20])  # another step of the same sampling run
    with torch.no_grad():
        fresh, fresh2 = model(x, t, cond=cond), model(x2, t2, cond=cond)
        per_call = len(calls) // 2
        calls.clear()
        assert per_call > 0
        with model.reuse_condition():
            first = model(x, t, cond=cond)
            again = model(x2, t2, cond=cond)
            assert len(calls) == per_call  # the second step took the kept maps
            assert torch.equal(first, fresh) and torch.equal(again, fresh2)
            cond[:, -1] = 0.0  # edited in place: its maps must be made again
            changed = model(x, t, cond=cond)
            assert len(calls) == 2 * per_call
            other = cond.clone()
            model(x, t, cond=other)
            assert len(calls) == 3 * per_call
        model(x, t, cond=cond)
        assert len(calls) == 4 * per_call  # outside the block nothing is kept
        assert torch.equal(changed, model(x, t, cond=cond)) and not torch.equal(changed, fresh)
        with model.reuse_condition(max_bytes=0):
            model(x, t, cond=cond)
            model(x, t, cond=cond)
        assert len(calls) == 7 * per_call
    with model.reuse_condition():  # with gradients the maps are made every time, and trained
        model(x, t, cond=cond)
        out = model(x, t, cond=cond)
        assert len(calls) == 9 * per_call
        out.sum().backward()
        assert all(m.gamma_beta.weight.grad is not None for m in model.modules() if isinstance(m, SPADEGroupNorm))


@pytest.mark.parametrize("kind", ["patch", "mask"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_no_grad_forward_equals_the_autograd_forward_bit_for_bit(kind, fmt):
    """Without autograd the blocks modulate and activate in place; the numbers must not move."""
    config = _small(kind)
    model = _unzero(build_model(config)).eval().to(memory_format=fmt)
    x = torch.randn(2, config.in_channels, 32, 32).contiguous(memory_format=fmt)
    t, cond = torch.tensor([3, 700]), _cond(config, 2, 32)
    with torch.no_grad():
        fast = model(x, t, cond=cond)
    assert torch.equal(fast, model(x, t, cond=cond).detach())
