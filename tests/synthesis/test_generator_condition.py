"""The generator follows its condition: the networks receive the mask's own tensors, a different
mask, guidance or presence vector changes the samples at a fixed seed, and the pixel scaling is
pinned both ways."""

import numpy as np
import pytest
import torch

from nasdm_aug.data.masks import patch_condition
from nasdm_aug.data.store import PatchStore
from nasdm_aug.generator import NASDMGenerator, resolve_types
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.training.data import NASDMDataset, image_to_x, x_to_image

OPTS = dict(sampling=SamplerOptions("ddim", steps=3), batch_size=4)


@pytest.fixture()
def fresh(runs):  # a generator of its own: these tests replace its networks' forward
    return NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def masks(real_store):
    return PatchStore(real_store).read(range(5), keys=("inst", "type"))


def _record(monkeypatch, model):
    calls = []
    forward = model.forward

    def recording(x, t, cond):
        calls.append(cond.detach().clone())
        return forward(x, t, cond)

    monkeypatch.setattr(model, "forward", recording)
    return calls


def _record_steps(monkeypatch, model):
    """(timestep, batch size) of each network call: a guided step batches [cond; null]."""
    calls = []
    forward = model.forward

    def recording(x, t, cond):
        calls.append((int(t[0]), x.shape[0]))
        return forward(x, t, cond)

    monkeypatch.setattr(model, "forward", recording)
    return calls


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_patch_model_receives_the_masks_own_condition(fresh, masks, monkeypatch, guidance):
    calls = _record(monkeypatch, fresh.patch_model)
    fresh.generate_patches(masks["inst"], masks["type"], guidance=guidance, seed=1, **OPTS)
    n_types = fresh.type_table.n_types
    want = np.stack([patch_condition(i, t, n_types) for i, t in zip(masks["inst"], masks["type"])])
    batches = [want[:4], want[4:]]
    per_batch = 3  # one network call per sampler step (guidance batches cond and null together)
    assert len(calls) == per_batch * len(batches)
    for k, cond in enumerate(calls):
        expect = torch.from_numpy(batches[k // per_batch])
        n = len(expect)
        if guidance == 1.0:
            torch.testing.assert_close(cond, expect, rtol=0, atol=0)
        else:  # [cond; null]: the mask's condition, then the all-zero null condition
            assert cond.shape[0] == 2 * n
            torch.testing.assert_close(cond[:n], expect, rtol=0, atol=0)
            assert cond[n:].abs().sum() == 0


def test_mask_model_receives_the_presence_vector(fresh, monkeypatch):
    calls = _record(monkeypatch, fresh.mask_model)
    fresh.generate_masks("epithelial,eosinophil", 3, guidance=1.0, seed=0, **OPTS)
    want = torch.from_numpy(resolve_types("epithelial,eosinophil", 3, fresh.type_table)).float()
    assert calls and all(torch.equal(c.float(), want) for c in calls)


def test_samples_change_with_the_mask_and_the_guidance(fresh, masks):
    base = fresh.generate_patches(masks["inst"], masks["type"], guidance=2.0, seed=1, **OPTS).astype(int)
    again = fresh.generate_patches(masks["inst"], masks["type"], guidance=2.0, seed=1, **OPTS).astype(int)
    np.testing.assert_array_equal(base, again)
    shifted = fresh.generate_patches(masks["inst"][::-1].copy(), masks["type"][::-1].copy(), guidance=2.0, seed=1,
                                     **OPTS).astype(int)
    assert np.abs(base - shifted).mean() > 0.5  # another mask, same seeds
    unguided = fresh.generate_patches(masks["inst"], masks["type"], guidance=1.0, seed=1, **OPTS).astype(int)
    assert np.abs(base - unguided).mean() > 0.5


def test_mask_samples_change_with_the_presence_vector(fresh):
    k = fresh.type_table.n_types
    a = np.zeros((2, k), np.float32)
    a[:, 0] = 1
    b = np.zeros((2, k), np.float32)
    b[:, 3] = 1

    def rep(presence, guidance):
        cond = torch.from_numpy(presence)
        return fresh._sample("mask", cond, fresh.mask_config.model.in_channels, sampling=OPTS["sampling"],
                             guidance=guidance, seed=0, sample_offset=0)

    base = rep(a, 2.0)
    torch.testing.assert_close(base, rep(a, 2.0), rtol=0, atol=0)
    assert (base - rep(b, 2.0)).abs().mean() > 1e-3
    assert (base - rep(a, 1.0)).abs().mean() > 1e-3


def test_pixel_scaling_is_exact_both_ways(fresh, masks, monkeypatch, tmp_path):
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values.reshape(16, 16)] * 3, axis=-1)
    x = image_to_x(image)
    assert x.dtype == np.float32 and x.shape == (3, 16, 16)
    np.testing.assert_array_equal(x[0].ravel(), values.astype(np.float32) / 127.5 - 1.0)
    assert (x.min(), x.max()) == (-1.0, 1.0) and x.ravel()[128] == pytest.approx(0.5 / 127.5, rel=1e-4)
    back = x_to_image(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_array_equal(back, image)
    # the training data read from a store carries those exact values
    from nasdm_aug.data.store_writer import PatchStoreWriter
    from nasdm_aug.types import LIZARD

    path = tmp_path / "ramp.h5"
    with PatchStoreWriter(path, patch_size=16, type_table=LIZARD) as w:
        w.append(image, np.zeros((16, 16), np.int32), np.zeros((16, 16), np.uint8), source="a", y=0, x=0, split="Train")
        w.set_splits({"Train": ["a"]})
    np.testing.assert_array_equal(NASDMDataset(path, "patch", "Train")[0]["x"].numpy(), x)
    # and the generator turns the sampler's output into exactly those grey levels
    monkeypatch.setattr(fresh, "_sample", lambda *a, **k: torch.from_numpy(x)[None].repeat(a[1].shape[0], 1, 1, 1))
    out = fresh.generate_patches(masks["inst"][:2], masks["type"][:2], **OPTS)
    np.testing.assert_array_equal(out, np.stack([image, image]))


def test_raw_mask_representations_are_what_generate_masks_decodes(runs):
    from nasdm_aug.data.masks import decode_mask, mask_channels
    from nasdm_aug.generator import DEFAULT_MARKER_THRESHOLD
    from nasdm_aug.utils import InputError

    gen = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32")
    insts, types = gen.generate_masks("epithelial", 6, seed=3, **OPTS)
    presence = resolve_types("epithelial", 6, gen.type_table)
    k = gen.type_table.n_types
    # the second batch of generate_masks (samples 4 and 5), drawn again from its offset
    rep = gen.sample_mask_representations(presence[4:], sampling=OPTS["sampling"], seed=3, sample_offset=4)
    assert rep.shape == (2, mask_channels(k), gen.patch_size, gen.patch_size) and rep.abs().max() <= 1
    for j, r in enumerate(rep):
        inst, typ = decode_mask(r, k, marker_threshold=DEFAULT_MARKER_THRESHOLD)
        np.testing.assert_array_equal(inst, insts[4 + j])
        np.testing.assert_array_equal(typ, types[4 + j])
    with pytest.raises(InputError, match=rf"presence vectors must be \[B, {k}\]"):
        gen.sample_mask_representations(presence[:, :2])


@pytest.mark.parametrize("mask_guidance,guidance", [(1.0, 2.0), (2.0, 1.0)])
def test_generate_gives_each_stage_its_own_guidance(fresh, monkeypatch, mask_guidance, guidance):
    # a guided call batches [cond; null], an unguided one cond alone: the batch size tells the scale apart
    mask_calls, patch_calls = _record(monkeypatch, fresh.mask_model), _record(monkeypatch, fresh.patch_model)
    fresh.generate("epithelial", 2, mask_guidance=mask_guidance, guidance=guidance, mask_guidance_interval=None,
                   seed=0, **OPTS)
    assert {len(c) for c in mask_calls} == {2 if mask_guidance == 1.0 else 4}
    assert {len(c) for c in patch_calls} == {2 if guidance == 1.0 else 4}


def test_generate_masks_defaults_to_the_mask_guidance(fresh, monkeypatch):
    from nasdm_aug import generator

    assert generator.DEFAULT_MASK_GUIDANCE != generator.DEFAULT_GUIDANCE
    seen = []
    real_cfg = generator.classifier_free_guidance
    monkeypatch.setattr(generator, "classifier_free_guidance", lambda net, s, **kw: seen.append(s) or real_cfg(net, s, **kw))
    fresh.generate_masks("epithelial", 1, seed=0, **OPTS)
    fresh.generate("epithelial", 1, seed=0, **OPTS)
    assert seen == [generator.DEFAULT_MASK_GUIDANCE, generator.DEFAULT_MASK_GUIDANCE, generator.DEFAULT_GUIDANCE]


def test_the_guidance_interval_guides_only_its_steps(fresh, masks, monkeypatch):
    from nasdm_aug.sampling import guided_timesteps

    kw = dict(seed=1, **OPTS)
    inst, typ = masks["inst"][:4], masks["type"][:4]
    base = fresh.generate_patches(inst, typ, guidance=2.0, **kw)
    # an interval holding every noise level is plain guidance; one holding none is no guidance
    np.testing.assert_array_equal(fresh.generate_patches(inst, typ, guidance=2.0, guidance_interval=(0, 1e6), **kw),
                                  base)
    np.testing.assert_array_equal(fresh.generate_patches(inst, typ, guidance=2.0, guidance_interval=(1e5, 1e6), **kw),
                                  fresh.generate_patches(inst, typ, guidance=1.0, **kw))
    # between: the guided steps, and only they, batch [cond; null]
    calls = _record_steps(monkeypatch, fresh.patch_model)
    ab = fresh._diffusion["patch"].alphas_cumprod
    sigma = np.sqrt((1 - ab) / ab)
    fresh.generate_patches(inst, typ, guidance=2.0, guidance_interval=(0.0, 1e6), **kw)
    steps = sorted({t for t, _ in calls})
    assert len(steps) == 3
    interval = (float(sigma[steps[0]]), float(sigma[steps[1]]))  # guides the middle step alone
    want = guided_timesteps(ab, interval)
    calls.clear()
    out = fresh.generate_patches(inst, typ, guidance=2.0, guidance_interval=interval, **kw)
    assert calls == [(t, 8 if want[t] else 4) for t in reversed(steps)] and bool(want[steps[1]])
    assert not (out == base).all() and not (out == fresh.generate_patches(inst, typ, guidance=1.0, **kw)).all()


def test_the_mask_guidance_interval_guides_only_its_steps(fresh, monkeypatch):
    kw = dict(seed=2, **OPTS)
    base = fresh.generate_masks("all", 4, guidance=3.0, guidance_interval=None, **kw)
    unguided = fresh.generate_masks("all", 4, guidance=1.0, **kw)
    assert not np.array_equal(base[0], unguided[0])  # else the checks below could not tell them apart
    # by default the mask model is guided at every step
    default = fresh.generate_masks("all", 4, guidance=3.0, **kw)
    np.testing.assert_array_equal(default[0], base[0])
    # an interval holding every noise level is plain guidance; one holding none is no guidance
    for got, want in ((fresh.generate_masks("all", 4, guidance=3.0, guidance_interval=(0, 1e6), **kw), base),
                      (fresh.generate_masks("all", 4, guidance=3.0, guidance_interval=(1e5, 1e6), **kw), unguided)):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # between: the mask model batches [cond; null] at the guided steps alone
    calls = _record_steps(monkeypatch, fresh.mask_model)
    ab = fresh._diffusion["mask"].alphas_cumprod
    sigma = np.sqrt((1 - ab) / ab)
    fresh.sample_mask_representations(np.ones((4, fresh.type_table.n_types), np.float32), guidance=3.0, seed=2,
                                      sampling=OPTS["sampling"], guidance_interval=None)
    steps = sorted({t for t, _ in calls})
    assert len(steps) == 3 and {n for _, n in calls} == {8}
    calls.clear()
    interval = (float(sigma[steps[0]]), float(sigma[steps[1]]))  # guides the middle step alone
    fresh.sample_mask_representations(np.ones((4, fresh.type_table.n_types), np.float32), guidance=3.0, seed=2,
                                      sampling=OPTS["sampling"], guidance_interval=interval)
    assert calls == [(steps[2], 4), (steps[1], 8), (steps[0], 4)]
    # generate passes its mask interval to the mask stage and its patch interval to the patch stage
    calls.clear()
    fresh.generate("all", 4, mask_guidance=3.0, mask_guidance_interval=interval, guidance=1.0, **kw)
    assert calls == [(steps[2], 4), (steps[1], 8), (steps[0], 4)]


def test_generate_gives_the_mask_stage_its_own_sampler(fresh, monkeypatch):
    mask_calls, patch_calls = _record_steps(monkeypatch, fresh.mask_model), _record_steps(monkeypatch, fresh.patch_model)
    kw = dict(seed=4, guidance=1.0, mask_guidance=1.0, **OPTS)
    out = fresh.generate("all", 4, mask_sampling=SamplerOptions("ddpm", steps=5), **kw)
    assert (len(mask_calls), len(patch_calls)) == (5, 3)  # the mask stage in its 5 steps, the patches in OPTS' 3
    # its masks are those generate_masks draws with that sampler, and None leaves both stages on ``sampling``
    inst, _ = fresh.generate_masks("all", 4, sampling=SamplerOptions("ddpm", steps=5), seed=4, guidance=1.0,
                                   batch_size=4)
    np.testing.assert_array_equal(out["inst"], inst)
    mask_calls.clear()
    patch_calls.clear()
    fresh.generate("all", 4, mask_sampling=None, **kw)
    assert (len(mask_calls), len(patch_calls)) == (3, 3)
