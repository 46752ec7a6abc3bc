"""Presets at other image sizes: depth and attention follow the size (``fit_to_size``), and the
adapted nets build and train one step at 64, 128 and 256 px."""

from __future__ import annotations

import pytest
import torch

from nasdm_aug.nets import build_model, get_preset
from nasdm_aug.nets.presets import PRESETS, fit_to_size
from nasdm_aug.nets.layers import AttentionBlock
from nasdm_aug.training.config import DiffusionSettings
from nasdm_aug.training.data import x_channels


def _cond(config, n: int, size: int, seed: int = 0) -> torch.Tensor:
    """A random condition of the right shape: presence vector (mask) or one-hot map + edge (patch)."""
    g = torch.Generator().manual_seed(seed)
    if config.kind == "mask":
        return (torch.rand(n, config.n_types, generator=g) > 0.5).float()
    cls = torch.randint(0, config.n_types + 1, (n, size, size), generator=g)
    onehot = torch.nn.functional.one_hot(cls, config.n_types + 1).permute(0, 3, 1, 2).float()
    return torch.cat([onehot, (torch.rand(n, 1, size, size, generator=g) > 0.8).float()], 1)


def _feature_sizes(config) -> list[int]:
    return [config.image_size >> level for level in range(len(config.channel_mults))]


def _attention_count(config) -> int:
    """Attention blocks the U-Net should hold: per attended level num_res_blocks in the encoder,
    num_res_blocks + 1 in the decoder, plus one in the middle."""
    return len(config.attention_resolutions) * (2 * config.num_res_blocks + 1) + 1


# -- closed forms ------------------------------------------------------------------------------------
TINY_SIZES = {  # size -> (channel_mults, attention_resolutions)
    64: ((1, 2, 2), (16,)),
    128: ((1, 1, 2, 2), (16,)),
    256: ((1, 1, 1, 2, 2), (16,)),
}
PAPER_SIZES = {
    64: ((1, 2, 3, 4), (32, 16, 8)),
    128: ((1, 1, 2, 3, 4), (32, 16, 8)),
    256: ((1, 1, 1, 2, 3, 4), (32, 16, 8)),
}


@pytest.mark.parametrize("kind", ["mask", "patch"])
@pytest.mark.parametrize("name, table, bottom", [("tiny", TINY_SIZES, 16), ("paper", PAPER_SIZES, 8)])
def test_depth_and_attention_follow_the_size(kind, name, table, bottom):
    for size, (mults, attn) in table.items():
        config = get_preset(kind, name, image_size=size)
        assert config.image_size == size
        assert config.channel_mults == mults, size
        assert config.attention_resolutions == attn, size
        assert _feature_sizes(config)[-1] == bottom, size  # the bottleneck stays the preset's
        assert set(attn) <= set(_feature_sizes(config))
        # the preset's other fields are untouched
        for field in ("base_channels", "num_res_blocks", "head_channels", "norm_groups", "spade_hidden"):
            assert getattr(config, field) == PRESETS[name][field]


def test_own_size_is_the_preset():
    for name in PRESETS:
        own = PRESETS[name]["image_size"]
        assert fit_to_size(PRESETS[name], own) == PRESETS[name]
        assert get_preset("patch", name, image_size=own) == get_preset("patch", name)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_paper_nets_build_with_attention_where_configured(size):
    config = get_preset("patch", "paper", image_size=size)
    with torch.device("meta"):  # the parameter table only: no memory, no time
        model = build_model(config)
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == _attention_count(config)
    # the widths are the preset's: the added levels are 1x base, so the deepest level keeps 4x
    assert model.out[0].num_channels == config.base_channels


def test_explicit_overrides_are_kept():
    c = get_preset("patch", "paper", image_size=256, channel_mults=(1, 2, 2, 4))
    assert c.channel_mults == (1, 2, 2, 4)
    assert c.attention_resolutions == (32,)  # attention still follows the size on the given depth
    c = get_preset("patch", "paper", image_size=256, attention_resolutions=(64, 16))
    assert c.channel_mults == (1, 1, 1, 2, 3, 4) and c.attention_resolutions == (64, 16)
    c = get_preset("mask", "tiny", image_size=128, channel_mults=(1, 2), attention_resolutions=(64,))
    assert (c.channel_mults, c.attention_resolutions) == ((1, 2), (64,))
    # keep works on fit_to_size directly too
    out = fit_to_size(PRESETS["tiny"], 256, frozenset({"channel_mults"}))
    assert out["channel_mults"] == (1, 2, 2) and out["attention_resolutions"] == (64,)
    out = fit_to_size(PRESETS["tiny"], 256, frozenset({"channel_mults"}), channel_mults=(1, 2))
    assert out["channel_mults"] == (1, 2) and out["attention_resolutions"] == (128,)
    # the regression: attention used to be placed on the preset's depth, not the one given
    c = get_preset("mask", "tiny", image_size=256, channel_mults=(1, 2))
    assert c.attention_resolutions == (128,)


def test_explicit_attention_that_is_not_a_feature_size_is_refused():
    with pytest.raises(ValueError, match="not feature sizes"):
        get_preset("patch", "tiny", image_size=128, attention_resolutions=(12,))


@pytest.mark.parametrize("name, size", [("tiny", 8), ("tiny", 15), ("paper", 4), ("paper", 7)])
def test_size_below_the_lowest_feature_size_raises(name, size):
    with pytest.raises(ValueError, match="smaller than this preset's lowest feature size"):
        get_preset("patch", name, image_size=size)


def test_size_at_the_lowest_feature_size_is_one_level():
    c = get_preset("patch", "tiny", image_size=16)
    assert c.channel_mults == (2,) and c.attention_resolutions == (16,)
    c = get_preset("mask", "paper", image_size=8)
    assert c.channel_mults == (4,) and c.attention_resolutions == (8,)


def test_non_power_of_two_size_takes_the_nearest_feature_sizes():
    # paper at 96: halvings while >= 8 px -> 96, 48, 24, 12; 32 -> 24, 16 -> 12, 8 -> 12 (nearest in octaves)
    c = get_preset("patch", "paper", image_size=96)
    assert c.channel_mults == (1, 2, 3, 4) and _feature_sizes(c) == [96, 48, 24, 12]
    assert c.attention_resolutions == (24, 12)
    # tiny at 96: 96, 48, 24 (12 < 16); 16 -> 24
    c = get_preset("mask", "tiny", image_size=96)
    assert c.channel_mults == (1, 2, 2) and c.attention_resolutions == (24,)
    # tiny at 48: 48, 24; 16 -> 24
    c = get_preset("patch", "tiny", image_size=48)
    assert c.channel_mults == (2, 2) and c.attention_resolutions == (24,)


# -- one training step --------------------------------------------------------------------------------
# zero-initialised layers get random weights there, so every parameter gets a gradient
from test_unet_models import _unzero  # noqa: E402


def _train_step(config, batch: int = 1, seed: int = 0) -> None:
    """Hybrid diffusion loss on a random batch, backward and an Adam step; checks shapes, grads, update."""
    size = config.image_size
    torch.manual_seed(seed)
    model = _unzero(build_model(config)).train()
    model.cond_drop_prob = 0.0  # the condition always takes part (null rows below cover the null path)
    c_in = x_channels(config.kind, config.n_types)
    assert config.in_channels == c_in
    x = torch.rand(batch, c_in, size, size) * 2 - 1
    cond = _cond(config, batch, size, seed)
    if config.kind == "mask":  # one null row, so the learned null embedding takes part
        cond = torch.cat([cond, model.null_condition(cond[:1])])
        x = torch.cat([x, x[:1]])
        batch += 1
    seen: set[int] = set()
    hooks = [m.register_forward_hook(lambda _m, inp, _o: seen.add(inp[0].shape[-1]))
             for m in model.modules() if isinstance(m, AttentionBlock)]
    outputs = []
    hooks.append(model.out.register_forward_hook(lambda _m, _i, out: outputs.append(out.shape)))
    diffusion = DiffusionSettings(steps=50).build()
    t = torch.randint(0, 50, (batch,), generator=torch.Generator().manual_seed(seed))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = diffusion.training_losses(model, x, t, model_kwargs={"cond": cond})
    loss = losses["loss"].mean()
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for h in hooks:
        h.remove()
    assert outputs == [(batch, 2 * c_in, size, size)]
    # attention ran at exactly the configured feature sizes (and the bottleneck's middle block)
    assert seen == set(config.attention_resolutions) | {_feature_sizes(config)[-1]}
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged


@pytest.mark.parametrize("kind", ["mask", "patch"])
@pytest.mark.parametrize("size", [64, 128, 256])
def test_tiny_trains_one_step_at_size(kind, size):
    config = get_preset(kind, "tiny", image_size=size)
    assert config.channel_mults == TINY_SIZES[size][0]
    _train_step(config)


def test_paper_forward_at_64():
    config = get_preset("patch", "paper", image_size=64)
    model = build_model(config).eval()
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, AttentionBlock):
            m.register_forward_hook(lambda _m, inp, _o: seen.add(inp[0].shape[-1]))
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64), torch.tensor([10]), _cond(config, 1, 64))
    assert y.shape == (1, 6, 64, 64) and torch.isfinite(y).all()
    assert seen == {32, 16, 8}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mask", "patch"])
def test_paper_trains_one_step_at_128(kind):
    _train_step(get_preset(kind, "paper", image_size=128))
