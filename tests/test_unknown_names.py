"""Every registry refuses an unknown name the same way: an InputError whose one line is
``unknown <kind> <name!r>; valid: <the valid names>``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hovernet.config import PostprocessConfig, get_hovernet_preset
from nasdm_aug.data.prepare import PrepareConfig
from nasdm_aug.data.readers import get_reader
from nasdm_aug.data.readers_folder import read_consep
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.data.toy import ToyConfig, generate_toy_tile
from nasdm_aug.diffusion import create_diffusion, create_named_schedule_sampler, get_named_beta_schedule, respace
from nasdm_aug.export.run import export
from nasdm_aug.mixing.balance import check_target_name, parse_combination
from nasdm_aug.mixing.copy_paste import RandNucleiPasted
from nasdm_aug.mixing.plan import MixConfig
from nasdm_aug.nets import get_preset
from nasdm_aug.sampling import SamplerOptions, get_sampler
from nasdm_aug.studies.config import STUDY_PRESETS, StudyConfig, get_study_preset
from nasdm_aug.studies.registry import BANK_REGISTRY, STUDY_REGISTRY, select_rows
from nasdm_aug.training.config import DiffusionSettings, get_train_preset
from nasdm_aug.training.data import x_channels
from nasdm_aug.types import LIZARD, get_type_table
from nasdm_aug.utils import InputError, unknown_name


def test_message_format():
    err = unknown_name("sampler", "euler", ("ddpm", "ddim"), extra=", or a path")
    assert isinstance(err, InputError) and isinstance(err, ValueError)
    assert str(err) == "unknown sampler 'euler'; valid: ddpm, ddim, or a path"
    assert str(unknown_name("split names", ["X"], ("Train",))) == "unknown split names ['X']; valid: Train"


def _cosine():
    return create_diffusion(steps=10, schedule="cosine")


def _tiny_train():
    return get_train_preset("mask", "tiny", n_types=6, image_size=32)


LIZARD_TYPES = "neutrophil, epithelial, lymphocyte, plasma, eosinophil, connective (the types of table 'lizard')"
# the studies' registries grow with the paper's tables: their names are read from them
CASES = {
    "type table": (lambda: get_type_table("nope"), "unknown type table 'nope'; valid: consep, lizard, pannuke"),
    "type": (lambda: LIZARD.id_of("macrophage"), f"unknown type 'macrophage'; valid: {LIZARD_TYPES}"),
    "reader": (lambda: get_reader("kumar"), "unknown format 'kumar'; valid: conic, consep, lizard, pannuke"),
    "prepare format": (lambda: PrepareConfig(format="kumar"),
                       "unknown format 'kumar'; valid: lizard, consep, conic, pannuke, toy"),
    "prepare type table": (lambda: PrepareConfig(format="toy", type_table="monusac"),
                           "unknown type table 'monusac'; valid: consep, lizard, pannuke"),
    "consep classes": (lambda: read_consep(".", classes="all"), "unknown CoNSeP classes 'all'; valid: merged, original"),
    "toy config": (lambda: ToyConfig(n_images=1, seed=0, frequencies="even"),
                   "unknown frequencies 'even'; valid: lizard, balanced"),
    "toy tile": (lambda: generate_toy_tile(0, frequencies="even"), "unknown frequencies 'even'; valid: lizard, balanced"),
    "beta schedule": (lambda: get_named_beta_schedule("quadratic", 10),
                      "unknown beta schedule 'quadratic'; valid: linear, cosine"),
    "var type": (lambda: create_diffusion(var_type="sigma"),
                 "unknown ModelVarType 'sigma'; valid: learned_range, learned, fixed_small, fixed_large"),
    "mean type": (lambda: create_diffusion(mean_type="x0"), "unknown ModelMeanType 'x0'; valid: epsilon, start_x, v"),
    "loss type": (lambda: create_diffusion(loss_type="l1"), "unknown LossType 'l1'; valid: mse, hybrid, kl"),
    "loss weighting": (lambda: create_diffusion(loss_weighting="snr"),
                       "unknown loss weighting 'snr'; valid: none, min-snr, p2"),
    "spacing": (lambda: respace(_cosine(), 5, spacing="karras"), "unknown spacing 'karras'; valid: uniform, logsnr"),
    "schedule sampler": (lambda: create_named_schedule_sampler("importance", _cosine()),
                         "unknown schedule sampler 'importance'; valid: uniform, loss-second-moment"),
    "net preset": (lambda: get_preset("patch", "huge"), "unknown preset 'huge'; valid: paper, tiny"),
    "input condition": (lambda: get_preset("patch", "tiny", input_condition="hover"),
                        "unknown input_condition 'hover'; valid: none, mask"),
    "training preset": (lambda: get_train_preset("mask", "huge"),
                        "unknown training preset 'huge'; valid: tiny, paper, consep-cpu"),
    "diffusion settings enum": (lambda: DiffusionSettings(var_type="sigma"),
                                "unknown diffusion var_type 'sigma'; valid: learned_range, learned, fixed_small, fixed_large"),
    "diffusion settings weighting": (lambda: DiffusionSettings(loss_weighting="snr"),
                                     "unknown diffusion loss_weighting 'snr'; valid: none, min-snr, p2"),
    "train config sampler": (lambda: _tiny_train().replace(schedule_sampler="importance"),
                             "unknown schedule_sampler 'importance'; valid: uniform, loss-second-moment"),
    "model kind": (lambda: x_channels("image", 6), "unknown model kind 'image'; valid: mask, patch"),
    "sampler": (lambda: get_sampler("euler"), "unknown sampler 'euler'; valid: ddim, ddpm, dpmpp_2m"),
    "sampler options": (lambda: SamplerOptions(sampler="euler"), "unknown sampler 'euler'; valid: ddim, ddpm, dpmpp_2m"),
    "hovernet preset": (lambda: get_hovernet_preset("huge"), "unknown HoVerNet preset 'huge'; valid: paper, tiny"),
    "post-processing preset": (lambda: PostprocessConfig.preset("cellpose"),
                               "unknown post-processing preset 'cellpose'; valid: default, hovernet, monai"),
    "balance target": (lambda: check_target_name("flat"), "unknown balance target 'flat'; valid: uniform, sqrt, "
                                                          "a dict of per-type weights or a tuple of n_types weights"),
    "combination": (lambda: parse_combination("macrophage:2", LIZARD),
                    f"combination 'macrophage:2': unknown type 'macrophage'; valid: {LIZARD_TYPES}"),
    "mixing mode": (lambda: MixConfig(mode="mixup"),
                    "unknown mixing mode 'mixup'; valid: add, replace, synthetic, real, balance"),
    "export format": (lambda: export("no-store.h5", "out", "coco"),
                      "unknown export format 'coco'; valid: conic, hovernet, pannuke, png"),
    "study": (lambda: select_rows("ablation"), f"unknown study 'ablation'; valid: {', '.join(STUDY_REGISTRY)}, all"),
    "study preset": (lambda: get_study_preset("huge"),
                     f"unknown preset 'huge'; valid: {', '.join(STUDY_PRESETS)}, or a CONFIG.json path"),
    "study bank": (lambda: StudyConfig(banks=("S9",)), f"unknown bank 'S9'; valid: {', '.join(BANK_REGISTRY)}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_registry_names_the_valid_ones(case):
    call, message = CASES[case]
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        call()


def test_smp_encoder_lists_the_encoders():
    smp = pytest.importorskip("segmentation_models_pytorch")
    from hovernet.model import HoVerNet

    cfg = get_hovernet_preset("tiny").model.replace(encoder="no_such_net")
    with pytest.raises(InputError, match=f"^unknown smp encoder 'no_such_net'; valid: {re.escape(', '.join(sorted(smp.encoders.encoders)))}$"):
        HoVerNet(cfg)


def test_store_keys_split_names_and_paste_weights(tmp_path):
    path = tmp_path / "s.h5"
    with PatchStoreWriter(path, patch_size=8, type_table=LIZARD, origin="real") as w:
        w.append(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32), np.zeros((8, 8), np.uint8), source="a")
        with pytest.raises(InputError, match=r"^unknown split names \['Val'\]; valid: Train, R1, R2, Test$"):
            w.set_splits({"Train": ["a"], "Val": ["a"]})
    store = PatchStore(path)
    with pytest.raises(InputError, match="^unknown key 'mask'; valid: image, inst, type, source, y, x, split, origin, "
                                         "parent, seed$"):
        store.read([0], keys=("mask",))
    with pytest.raises(InputError, match="^unknown metadata 'image'; valid: source, y, x, split, origin, parent, seed$"):
        store.meta("image")
    with pytest.raises(InputError, match=r"^unknown type_weights 'zipf'; valid: uniform, sqrt, frequency, "
                                         r"or \{type name: weight\}$"):
        RandNucleiPasted(store, split=None, type_weights="zipf")
