import dataclasses

import pytest
from click.testing import CliRunner

from cli.main import cli
from nasdm_aug import __version__
from nasdm_aug.config import ConfigBase, load_config
from nasdm_aug.types import CONSEP, LIZARD, PANNUKE, NucleiTypeTable, get_type_table
from nasdm_aug.utils import InputError, atomic_output


def test_lizard_ids_are_canonical():
    assert [LIZARD.name_of(i) for i in LIZARD.ids] == [
        "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"]
    assert LIZARD.id_of("Eosinophil") == 5
    assert CONSEP.n_types == 4 and CONSEP.id_of("spindle-shaped") == 4
    assert PANNUKE.n_types == 5 and PANNUKE.name_of(4) == "dead"
    assert LIZARD.palette()[0] == (0, 0, 0) and len(LIZARD.palette()) == 7


def test_type_table_json_round_trip_and_errors():
    for table in (LIZARD, CONSEP, PANNUKE):
        assert NucleiTypeTable.from_json(table.to_json()) == table
    with pytest.raises(InputError, match="valid: consep, lizard, pannuke"):
        get_type_table("nope")
    with pytest.raises(InputError, match="neutrophil"):
        LIZARD.id_of("macrophage")
    with pytest.raises(ValueError, match="duplicate"):
        NucleiTypeTable("x", ("a", "a"), ((0, 0, 0), (1, 1, 1)))


@dataclasses.dataclass(frozen=True)
class _Inner(ConfigBase):
    width: int = 4


@dataclasses.dataclass(frozen=True)
class _Cfg(ConfigBase):
    name: str = "a"
    mults: tuple[int, ...] = (1, 2)
    inner: _Inner = _Inner()
    lr: float | None = None

    def __post_init__(self):
        if self.inner.width < 1:
            raise ValueError(f"width must be >= 1, got {self.inner.width}")


def test_config_round_trip_and_validation(tmp_path):
    cfg = _Cfg(mults=(1, 2, 3), inner=_Inner(8), lr=0.5)
    path = tmp_path / "c.json"
    cfg.save(path)
    assert _Cfg.load(path) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        _Cfg.from_dict({"nme": "x"})
    path.write_text('{"inner": {"width": 0}}')
    with pytest.raises(InputError, match="width must be >= 1"):
        load_config(_Cfg, path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="c.json: not a readable JSON"):
        load_config(_Cfg, path)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(InputError, match="pass `overwrite` to replace it"):
        with atomic_output(target):
            pass
    with atomic_output(target, overwrite=True) as tmp:
        tmp.write_text("again")
    assert target.read_text() == "again"


def test_cli_help_and_version():
    runner = CliRunner()
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    from cli.main import COMMANDS

    for name, (_, line) in COMMANDS.items():
        assert name in res.output and line[:20] in res.output


def test_the_cli_names_flags_where_the_library_names_parameters(tmp_path):
    """The library's backticked parameter names reach command-line users as flags."""
    from click.testing import CliRunner

    from cli.main import as_flags, cli

    assert as_flags("pass `overwrite` or lower `patch_size`; `type_map` entry; `nasdm-aug prepare`") == (
        "pass --overwrite or lower --patch-size; --map entry; `nasdm-aug prepare`")
    args = ["toy", str(tmp_path / "toy"), "--images", "1", "--seed", "0", "--size", "32", "--quiet"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    res = CliRunner().invoke(cli, args)
    assert isinstance(res.exception, InputError) and str(res.exception).endswith("pass --overwrite to replace it")
