"""The patch condition at the U-Net input (``input_condition="mask"``): the encoder's first
convolution receives the noisy image and the very condition SPADE gets (dropped rows included)."""

import json

import pytest
import torch

from nasdm_aug.nets import build_model
from nasdm_aug.nets.presets import UNetConfig, get_preset
from nasdm_aug.training.config import TrainConfig

NET = dict(image_size=16, base_channels=8, channel_mults=(1, 2), attention_resolutions=(), head_channels=8,
           norm_groups=4, spade_hidden=8, n_types=4)


def _cond(n, size=16, n_types=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(0, n_types + 1, (n, size, size), generator=g)
    one_hot = torch.nn.functional.one_hot(types, n_types + 1).permute(0, 3, 1, 2).float()
    edge = (torch.rand(n, 1, size, size, generator=g) < 0.2).float()
    return torch.cat([one_hot, edge], 1)


def _first_input(model, x, t, cond):
    seen = []
    hook = model.input_blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    out = model(x, t, cond)
    hook.remove()
    return seen[0], out


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_encoder_sees_the_condition(fmt):
    cfg = get_preset("patch", "tiny", **NET, input_condition="mask")
    assert cfg.input_cond_channels == cfg.cond_channels == 6
    model = build_model(cfg).eval().to(memory_format=fmt)
    assert model.input_blocks[0][0].in_channels == 3 + 6
    x, cond = torch.randn(3, 3, 16, 16), _cond(3)
    seen, out = _first_input(model, x.contiguous(memory_format=fmt), torch.tensor([1, 5, 9]), cond)
    torch.testing.assert_close(seen, torch.cat([x, cond], 1), rtol=0, atol=0)
    assert out.shape == (3, 6, 16, 16)
    # the null condition (classifier-free guidance) reaches the input as zeros too
    seen, _ = _first_input(model, x, torch.tensor([1, 5, 9]), model.null_condition(cond))
    assert seen[:, 3:].abs().sum() == 0


def test_dropped_condition_is_dropped_at_the_input_too():
    cfg = get_preset("patch", "tiny", **NET, input_condition="mask", cond_drop_prob=0.5)
    model = build_model(cfg).train()
    x, cond = torch.randn(16, 3, 16, 16), _cond(16)
    torch.manual_seed(3)
    seen, _ = _first_input(model, x, torch.zeros(16, dtype=torch.long), cond)
    torch.manual_seed(3)
    drop = torch.rand(16) < 0.5  # the model's own draw (PatchUNet._drop_mask)
    assert 0 < drop.sum() < 16
    torch.testing.assert_close(seen[:, 3:], cond * (~drop).float()[:, None, None, None], rtol=0, atol=0)


def test_without_input_condition_the_encoder_sees_x_alone():
    model = build_model(get_preset("patch", "tiny", **NET)).eval()
    assert model.input_blocks[0][0].in_channels == 3
    x = torch.randn(2, 3, 16, 16)
    seen, _ = _first_input(model, x, torch.tensor([1, 2]), _cond(2))
    torch.testing.assert_close(seen, x, rtol=0, atol=0)


def test_input_condition_changes_the_output_through_the_encoder():
    """With SPADE's modulation silenced, a different mask still changes the output: the input path works."""
    torch.manual_seed(0)
    model = build_model(get_preset("patch", "tiny", **NET, input_condition="mask")).eval()
    silenced = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".gamma_beta." in name:  # SPADE's gamma = beta = 0: a plain GroupNorm
                p.zero_()
                silenced += 1
            elif p.abs().sum() == 0:  # zero-initialised output layers, so the output is not 0
                p.normal_(0, 0.05)
    assert silenced > 0
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 3])
    a, b = model(x, t, _cond(2, seed=1)), model(x, t, _cond(2, seed=2))
    assert (a - b).abs().max() > 1e-4
    # without the input path the same silenced network ignores the mask entirely
    plain = build_model(get_preset("patch", "tiny", **NET)).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "input_blocks.0.0.weight"}
    plain.load_state_dict({**state, "input_blocks.0.0.weight": model.state_dict()["input_blocks.0.0.weight"][:, :3]})
    torch.testing.assert_close(plain(x, t, _cond(2, seed=1)), plain(x, t, _cond(2, seed=2)))


def test_config_checks_and_old_configs():
    with pytest.raises(ValueError, match=r"unknown input_condition 'hover'; valid: none, mask$"):
        get_preset("patch", "tiny", **NET, input_condition="hover")
    with pytest.raises(ValueError, match="mask model takes a type-presence vector, so it has only 'none'"):
        get_preset("mask", "tiny", **NET, input_condition="mask")
    old = get_preset("patch", "tiny", **NET).to_dict()
    del old["input_condition"]  # a config written before the option existed
    assert UNetConfig.from_dict(old).input_condition == "none"


def test_old_run_config_loads_with_todays_behaviour(tmp_path):
    from nasdm_aug.training.config import get_train_preset

    cfg = get_train_preset("patch", "consep-cpu", n_types=4, image_size=64).to_dict()
    for section, key in (("model", "input_condition"), ("diffusion", "loss_weighting"), ("diffusion", "snr_gamma"),
                         ("diffusion", "p2_gamma"), ("diffusion", "p2_k")):
        del cfg[section][key]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = TrainConfig.load(tmp_path / "config.json")
    assert loaded.model.input_condition == "none" and loaded.diffusion.loss_weighting == "none"


def test_resume_with_a_changed_option_is_refused_naming_it(tmp_path):
    from nasdm_aug.training.config import get_train_preset
    from nasdm_aug.training.run import resolve_run_config
    from nasdm_aug.utils import InputError

    cfg = get_train_preset("patch", "consep-cpu", n_types=4, image_size=64)
    cfg.save(tmp_path / "config.json")
    assert (cfg.diffusion.loss_weighting, cfg.model.input_condition) == ("min-snr", "mask")
    changed = cfg.replace(diffusion=cfg.diffusion.replace(loss_weighting="p2"))
    with pytest.raises(InputError, match=r"differs from the run's in \['diffusion.loss_weighting'\]"):
        resolve_run_config(tmp_path, changed, resume=True)
    changed = cfg.replace(diffusion=cfg.diffusion.replace(mean_type="v"))
    with pytest.raises(InputError, match=r"differs from the run's in \['diffusion.mean_type'\]"):
        resolve_run_config(tmp_path, changed, resume=True)
    changed = cfg.replace(model=cfg.model.replace(input_condition="none"))
    with pytest.raises(InputError, match=r"differs from the run's in \['model.input_condition'\]"):
        resolve_run_config(tmp_path, changed, resume=True)
    assert resolve_run_config(tmp_path, cfg.replace(steps=7), resume=True).steps == 7


def test_the_consep_cpu_patch_recipe_takes_the_cosine_schedule_and_train_can_override_it(tmp_path):
    from nasdm_aug.data.prepare import PrepareConfig, prepare
    from nasdm_aug.training.config import get_train_preset
    from nasdm_aug.training.run import run_config_from_options
    from nasdm_aug.utils import InputError

    assert get_train_preset("patch", "consep-cpu", n_types=4, image_size=64).diffusion.schedule == "cosine"
    assert get_train_preset("mask", "consep-cpu", n_types=4, image_size=64).diffusion.schedule == "linear"
    assert get_train_preset("patch", "paper", n_types=4, image_size=64).diffusion.schedule == "linear"
    store = tmp_path / "toy.h5"
    prepare(PrepareConfig(format="toy", toy_images=2, toy_size=64, patch_size=64, stride=64, out=str(store)),
            progress=False)
    cfg = run_config_from_options("patch", store, tmp_path / "run", preset="consep-cpu", schedule="linear")
    assert cfg.diffusion.schedule == "linear" and cfg.diffusion.loss_weighting == "min-snr"
    (tmp_path / "run").mkdir()
    cfg.save(tmp_path / "run" / "config.json")  # a run made with the linear schedule
    with pytest.raises(InputError, match=r"differs from the run's in \['diffusion.schedule'\]"):
        run_config_from_options("patch", store, tmp_path / "run", resume=True, schedule="cosine")
