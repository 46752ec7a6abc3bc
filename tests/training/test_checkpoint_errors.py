"""Damaged model folders give one line naming the file, before anything large is built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from nasdm_aug.generator import TOY_MODEL_DIR
from nasdm_aug.training.checkpoint import load_checkpoint, load_data_info, read_torch_state, safetensors_header
from nasdm_aug.utils import InputError


@pytest.fixture()
def toy(tmp_path):
    dst = tmp_path / "toy"
    shutil.copytree(TOY_MODEL_DIR, dst)
    return dst


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_truncated_and_foreign_weights(toy):
    weights = toy / "patch" / "ema.safetensors"
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match=r"ema.safetensors: truncated \(or padded\): the file's \d+ bytes are not what its header describes$"):
        load_checkpoint(toy / "patch")
    weights.write_bytes(full[:1000])
    with pytest.raises(InputError, match="not a safetensors file or truncated"):
        load_checkpoint(toy / "patch")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(InputError, match="damaged safetensors header"):
        safetensors_header(weights)


def test_config_that_does_not_fit_is_refused_before_building(toy):
    # 4096 base channels would need tens of GB; the header check refuses it on the meta device
    _edit_json(toy / "patch" / "config.json", lambda c: c["model"].update(base_channels=4096))
    with pytest.raises(InputError, match=r"weights do not fit the model its config.json describes \('.+' is \(\d+, \d+\) in the file"):
        load_checkpoint(toy / "patch")


def test_null_model_and_broken_data_json(toy):
    _edit_json(toy / "mask" / "config.json", lambda c: c.update(model=None))
    with pytest.raises(InputError, match="config.json.*model: expected a JSON object for UNetConfig, got null"):
        load_checkpoint(toy / "mask")
    (toy / "patch" / "data.json").write_text("{bad")
    with pytest.raises(InputError, match="data.json: not readable JSON"):
        load_data_info(toy / "patch")
    (toy / "patch" / "data.json").write_text('{"patch_size": 64}')
    with pytest.raises(InputError, match="data.json: no type_table"):
        load_data_info(toy / "patch")


def test_truncated_trainer_state(tmp_path):
    path = tmp_path / "trainer_state.pt"
    torch.save({"step": 3, "opt": {"a": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot read the trainer state, the file is damaged or truncated"):
        read_torch_state(path)


def test_cli_synthesize_with_damaged_model_is_one_line(toy, tmp_path):
    weights = toy / "patch" / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    res = subprocess.run([sys.executable, "-m", "cli.main", "synthesize", "--model", str(toy / "mask"), "--model",
                          str(toy / "patch"), "--types", "all", "--num", "1", "--out", str(tmp_path / "o.h5")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {weights}: ") and "truncated" in lines[0]


def test_weights_of_another_dtype_are_refused(toy):
    from safetensors.torch import load_file, save_file

    weights = toy / "mask" / "ema.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name].double()
    save_file(state, str(weights))
    with pytest.raises(InputError, match=f"'{name}' is F64 in the file, the model needs F32"):
        load_checkpoint(toy / "mask")


def test_safetensors_header_lists_names_shapes_and_dtypes(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, str(path), metadata={"step": "7"})
    assert safetensors_header(path) == {"a": {"dtype": "F32", "shape": [2, 3]}, "b": {"dtype": "BF16", "shape": [4]}}
    path.write_bytes(path.read_bytes() + b"\0" * 8)  # bytes the header does not describe
    with pytest.raises(InputError, match=r"w.safetensors: truncated \(or padded\): the file's \d+ bytes"):
        safetensors_header(path)
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"w.safetensors: not a safetensors file or truncated \(0 bytes\)$"):
        safetensors_header(path)
    with pytest.raises(InputError, match="nope.safetensors: weights file missing"):
        safetensors_header(tmp_path / "nope.safetensors")
