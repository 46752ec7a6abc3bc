"""The export ``nasdm-aug export`` asks for: :func:`export_from_options` turns its options into the
mix (a :class:`~nasdm_aug.mixing.MixConfig`, or none) and the format options of :func:`export`."""

from __future__ import annotations

import os
from typing import Any

from nasdm_aug.export.run import export, parse_type_map
from nasdm_aug.utils import InputError

__all__ = ["export_from_options", "mix_from_options"]

# the options that describe a mix, with their values when no mix is asked for
_MIX_DEFAULTS = {"ratio": None, "bank": None, "seed": 0, "base_fraction": 0.25, "include_generated": False,
                 "target": "sqrt"}


def mix_from_options(split: str | None, mode: str | None = None, *, ratio: float | None = None, seed: int = 0,
                     base_fraction: float = 0.25, include_generated: bool = False, target: str = "sqrt",
                     min_fidelity: float | None = None, top_fraction: float | None = None, bank: Any = None):
    """The :class:`~nasdm_aug.mixing.MixConfig` of ``mode`` drawn from ``split`` (default Train), or
    None without a ``mode``.

    Raises:
        InputError: an option of a mix (``ratio``, ``bank``, ``seed``, ``base_fraction``,
            ``include_generated``, ``target``) given without ``mode``, or a mix the config rejects.
    """
    if mode is None:
        given = {"ratio": ratio, "bank": bank, "seed": seed, "base_fraction": base_fraction,
                 "include_generated": include_generated, "target": target}
        for name, value in given.items():
            if value != _MIX_DEFAULTS[name]:
                raise InputError(f"`{name}` belongs to a mix; give `mode` too (or leave `{name}` out)")
        return None
    from nasdm_aug.mixing.balance import parse_target
    from nasdm_aug.mixing.plan import MixConfig

    tgt = parse_target(target)
    return MixConfig(mode=mode, split=split or "Train", ratio=ratio, base_fraction=base_fraction,
                     include_generated=include_generated, seed=seed, target=tgt if isinstance(tgt, str) else dict(tgt),
                     min_fidelity=min_fidelity, top_fraction=top_fraction)


def export_from_options(store: str | os.PathLike, out: str | os.PathLike, fmt: str, *, mode: str | None = None,
                        bank: str | os.PathLike | None = None, type_map: str | None = None, fold: int | None = None,
                        tissue: str | None = None, min_fidelity: float | None = None,
                        top_fraction: float | None = None, overwrite: bool = False, progress: bool = True,
                        **mix: Any) -> dict[str, Any]:
    """:func:`export` of ``store`` (``STORE[:SPLIT]``) as ``nasdm-aug export`` gives it: a mix of
    ``mode`` with ``bank`` (:func:`mix_from_options` of ``**mix``: ``ratio``, ``seed``,
    ``base_fraction``, ``include_generated``, ``target``), ``type_map`` as ``"SRC=DST,..."``, and
    the fidelity filter on the mix's bank or, without a mix, on ``store``.

    Returns:
        The manifest (see :func:`export`).

    Raises:
        InputError: as :func:`mix_from_options`, :func:`parse_type_map` and :func:`export`, and
            ``fold`` or ``tissue`` for a format other than pannuke.
    """
    from nasdm_aug.data.store import parse_store_arg

    path, split = parse_store_arg(store)
    plan = mix_from_options(split, mode, bank=bank, min_fidelity=min_fidelity, top_fraction=top_fraction, **mix)
    if fmt != "pannuke" and (fold is not None or tissue is not None):
        raise InputError("`fold` and `tissue` are options of `format` pannuke")
    filt = {} if plan is not None else {"min_fidelity": min_fidelity, "top_fraction": top_fraction}
    return export(path, out, fmt, split=split, bank=bank, mix=plan, type_map=parse_type_map(type_map),
                  overwrite=overwrite, progress=progress, fold=fold, tissue=tissue, **filt)
