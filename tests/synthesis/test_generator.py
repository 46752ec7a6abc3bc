import numpy as np
import pytest

from nasdm_aug.generator import NASDMGenerator, resolve_model_dirs, resolve_types
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import InputError
from nasdm_aug.sampling import SamplerOptions

OPTS = dict(sampling=SamplerOptions("ddim", steps=4), guidance=2.0)


@pytest.fixture(scope="module")
def gen(runs):
    return NASDMGenerator.from_pretrained(*runs, device="cpu")


def test_resolve_types():
    np.testing.assert_array_equal(resolve_types("epithelial, eosinophil", 2, LIZARD)[1], [0, 1, 0, 0, 1, 0])
    assert resolve_types("all", 3, LIZARD).sum() == 18
    rnd = resolve_types("random", 50, LIZARD, seed=4)
    assert rnd.sum(1).min() >= 1 and 0.3 < rnd.mean() < 0.7
    np.testing.assert_array_equal(rnd[10:], resolve_types("random", 40, LIZARD, seed=4, sample_offset=10))
    with pytest.raises(InputError, match="unknown type 'macrophage'.*neutrophil"):
        resolve_types("macrophage", 1, LIZARD)
    with pytest.raises(InputError, match=r"must be \[6\]"):
        resolve_types(np.ones(5), 1, LIZARD)


def test_generate_end_to_end(gen):
    out = gen.generate("all", 3, seed=1, **OPTS)
    assert out["image"].shape == (3, 16, 16, 3) and out["image"].dtype == np.uint8
    assert out["inst"].dtype == np.int32 and out["type"].max() <= 6
    # every pixel of an instance has one type
    for inst, type_map in zip(out["inst"], out["type"]):
        for k in np.unique(inst[inst > 0]):
            assert len(np.unique(type_map[inst == k])) == 1


def test_patches_do_not_depend_on_batch_size_or_offset(gen, real_store):
    from nasdm_aug.data.store import PatchStore

    d = PatchStore(real_store).read(range(5), keys=("inst", "type"))
    a = gen.generate_patches(d["inst"], d["type"], seed=3, batch_size=5, **OPTS)
    b = gen.generate_patches(d["inst"], d["type"], seed=3, batch_size=2, **OPTS)
    c = gen.generate_patches(d["inst"][2:], d["type"][2:], seed=3, sample_offset=2, **OPTS)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[2:], c)
    other = gen.generate_patches(d["inst"], d["type"], seed=4, batch_size=5, **OPTS)
    assert not np.array_equal(a, other)


def test_generator_errors(gen, runs, tmp_path):
    with pytest.raises(InputError, match="trained on 16x16"):
        gen.generate_patches(np.zeros((1, 8, 8), np.int32), np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(InputError, match="must be >= 1"):
        gen.generate_masks("all", 0)
    with pytest.raises(InputError, match="no such model run"):
        NASDMGenerator.from_pretrained(tmp_path / "nope", runs[1])
    with pytest.raises(InputError, match="expected a mask model run"):
        NASDMGenerator.from_pretrained(runs[1], runs[1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NASDM checkpoint"):
        resolve_model_dirs([str(tmp_path / "empty")])
    assert resolve_model_dirs([str(runs[1]), str(runs[0])]) == (runs[0], runs[1])


def test_layouts_sample_the_same_patches(runs, real_store):
    """channels_last (the default on a CPU) and NCHW differ only in float rounding: the same seeds give the
    same patches up to a grey level here and there, and the models really are laid out as asked.
    In float32: in bf16 the random test weights, which push pixels to 0 or 255, flip a few."""
    import torch

    from nasdm_aug.data.store import PatchStore

    d = PatchStore(real_store).read(range(4), keys=("inst", "type"))
    cl = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype=torch.float32)
    nchw = NASDMGenerator.from_pretrained(*runs, device="cpu", layout="contiguous", dtype="float32")
    conv = lambda g: next(p for p in g.patch_model.parameters() if p.dim() == 4)  # noqa: E731
    assert cl.layout == "channels_last" and conv(cl).is_contiguous(memory_format=torch.channels_last)
    assert not conv(cl).is_contiguous() and conv(nchw).is_contiguous()
    a = cl.generate_patches(d["inst"], d["type"], seed=3, **OPTS).astype(int)
    b = nchw.generate_patches(d["inst"], d["type"], seed=3, **OPTS).astype(int)
    other = nchw.generate_patches(d["inst"], d["type"], seed=4, **OPTS).astype(int)
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05 < np.abs(other - b).mean()
    with pytest.raises(InputError, match="layout must be one of auto, channels_last, contiguous, got 'nhwc'"):
        NASDMGenerator.from_pretrained(*runs, device="cpu", layout="nhwc")


def test_dtype_auto_is_bf16_only_where_it_is_native(runs, monkeypatch):
    import torch

    import nasdm_aug.hardware as hw

    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(hw, "native_bf16", lambda device, native=native: native)
        assert NASDMGenerator.from_pretrained(*runs, device="cpu").dtype == want  # the default is "auto"
        assert NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="auto").dtype == want
        assert NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32").dtype == torch.float32
        assert NASDMGenerator.from_pretrained(*runs, device="cpu", dtype=torch.bfloat16).dtype == torch.bfloat16
        assert NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(InputError, match=r"dtype must be torch.float32, torch.bfloat16 or a precision \(fp32, bf16, "
                                         r"auto\), got 'fp16'"):
        NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="fp16")
    with pytest.raises(InputError, match="dtype must be float32 or bfloat16, got torch.float16"):
        NASDMGenerator.from_pretrained(*runs, device="cpu", dtype=torch.float16)


def test_compile_wraps_each_network_once_and_samples_the_same(runs, real_store, monkeypatch):
    """compile=True samples through torch.compile's wrapper of each network, built once, and a
    backend failure is one line that names the remedy. (torch.compile is replaced by a recording
    wrapper here: a real compile takes minutes on this CPU; see the slow test below.)"""
    import torch

    from nasdm_aug.data.store import PatchStore

    class Wrapper(torch.nn.Module):  # forwards attributes as torch.compile's OptimizedModule does
        def __init__(self, mod):
            super().__init__()
            self.mod, self.calls = mod, 0

        def forward(self, *a, **k):
            self.calls += 1
            return self.mod(*a, **k)

        def null_condition(self, cond):
            return self.mod.null_condition(cond)

    made = []
    monkeypatch.setattr(torch, "compile", lambda mod, **k: made.append(Wrapper(mod)) or made[-1])
    d = PatchStore(real_store).read(range(3), keys=("inst", "type"))
    eager = NASDMGenerator.from_pretrained(*runs, device="cpu")
    comp = NASDMGenerator.from_pretrained(*runs, device="cpu", compile=True)
    a = eager.generate_patches(d["inst"], d["type"], seed=3, batch_size=2, **OPTS)
    b = comp.generate_patches(d["inst"], d["type"], seed=3, batch_size=2, **OPTS)
    assert np.array_equal(a, b) and len(made) == 1 and made[0].calls == 2 * 4  # 2 batches x 4 steps
    comp.generate_masks("all", 2, **OPTS)
    assert len(made) == 2 and made[1].mod is comp.mask_model

    class Failed(Exception):
        pass

    Failed.__module__ = "torch._inductor.exc"

    class Broken(Wrapper):
        def forward(self, *a, **k):
            raise Failed("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda mod, **k: Broken(mod))
    with pytest.raises(InputError, match=r"torch.compile of the patch model failed on cpu \(InvalidCxxCompiler: "
                                         r"No working C\+\+ compiler found\); sample without `compile`"):
        NASDMGenerator.from_pretrained(*runs, device="cpu", compile=True).generate_patches(
            d["inst"][:1], d["type"][:1], **OPTS)


@pytest.mark.slow
def test_real_compile_samples_the_eager_patches(runs, real_store):
    from nasdm_aug.data.store import PatchStore

    d = PatchStore(real_store).read(range(2), keys=("inst", "type"))
    # float32: under bf16 autocast, compiled and eager kernels round differently, and these random,
    # saturating test networks turn such rounding into whole-pixel flips (up to 237 grey levels
    # on a CPU with native bf16), which says nothing about the compile itself
    a = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32").generate_patches(d["inst"], d["type"],
                                                                                             **OPTS)
    b = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32", compile=True).generate_patches(
        d["inst"], d["type"], **OPTS)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
