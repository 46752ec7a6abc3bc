"""Frozen-dataclass configs stored as JSON, with named presets (docs/architecture.md, Contracts)."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

from nasdm_aug.utils import InputError, write_text_atomic

__all__ = ["ConfigBase", "load_config"]

C = TypeVar("C", bound="ConfigBase")


class ConfigBase:
    """Mixin for frozen dataclass configs: dict/JSON round trip with strict key checking.

    Subclasses are ``@dataclass(frozen=True)`` and validate themselves in ``__post_init__``
    by raising ``ValueError``. Nested dataclass fields and tuples round-trip through JSON.
    """

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples become lists, nested configs become dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]

    def to_json(self, indent: int = 2) -> str:
        """Serialise to JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON to ``path`` (atomically)."""
        write_text_atomic(path, self.to_json() + "\n")

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict, converting lists to tuples and nested dicts to nested configs.

        Raises:
            ValueError: unknown keys, or a value the config's validation rejects.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; valid: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in data.items():
            try:
                kwargs[k] = _coerce(hints.get(k), v)
            except ValueError as exc:
                raise ValueError(f"{k}: {exc}") from None
        return cls(**kwargs)

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read a config from a JSON file; errors name the file."""
        return load_config(cls, path)


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):  # e.g. "model": null would build a config without a model
            raise ValueError(f"expected a JSON object for {hint.__name__}, got {json.dumps(value)}")
        return hint.from_dict(value)  # type: ignore[attr-defined]
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else None
        return tuple(_coerce(inner, v) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(hint):
            if arg is not type(None):
                return _coerce(arg, value)
    return value


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    """Load ``cls`` from a JSON file.

    Raises:
        InputError: the file is missing, is not JSON, or does not describe a valid ``cls``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON config ({exc})") from None
    try:
        return cls.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: {exc}") from None
