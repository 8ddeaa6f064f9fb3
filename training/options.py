"""Command-line options generated from ``TrainConfig``'s fields, so each default is written once.

A field opts in with ``metadata=cli(help, ...)``; its type gives the argparse type (``Literal``
gives choices, ``bool`` a ``--x/--no-x`` pair, ``X | None`` accepts an empty string as None)
and its default is the option's default. The option's destination is the field's name, so
:func:`config_values` reads a parsed namespace back without a hand mapping.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal


def cli(
    help: str = "", *, flag: str | None = None, parse: Callable[[str], Any] | None = None
) -> dict[str, Any]:
    """Field metadata that turns a ``TrainConfig`` field into a command-line option.

    ``flag`` names the option when it differs from the field (``--data`` for ``data_dir``);
    ``parse`` reads types argparse cannot (an image size such as ``64x48``).
    """
    return {"cli": {"help": help, "flag": flag, "parse": parse}}


def parse_size(text: str) -> tuple[int, int]:
    """``64`` or ``64x48`` (height x width)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[0]), int(parts[1])


def add_config_options(
    parser: argparse.ArgumentParser,
    config_type: type,
    names: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add one option per named field; ``defaults`` overrides a field's default for this parser.

    Overrides are for values a command line knows and the dataclass cannot (the shared data
    folder's location) or a sweep's smaller subset; everything else comes from the field.
    """
    hints = typing.get_type_hints(config_type)
    by_name = {f.name: f for f in dataclasses.fields(config_type)}
    overrides = dict(defaults or {})
    for name in names:
        spec = by_name[name]
        meta = spec.metadata.get("cli")
        if meta is None:
            raise ValueError(f"{config_type.__name__}.{name} has no cli() metadata")
        if name in overrides:
            default = overrides.pop(name)
        elif spec.default is not dataclasses.MISSING:
            default = spec.default
        else:
            raise ValueError(f"{config_type.__name__}.{name} needs a default for the command line")
        flag = "--" + (meta["flag"] or name).replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": meta["help"] or None}
        hint, optional = _unwrap_optional(hints[name])
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is Literal:
            kwargs["choices"] = typing.get_args(hint)
        elif meta["parse"] is not None:
            kwargs["type"] = meta["parse"]
            kwargs["metavar"] = flag[2:].replace("-", "_").upper()
        elif hint in (int, float, str):
            kwargs["type"] = _or_none(hint) if optional else hint
            kwargs["metavar"] = flag[2:].replace("-", "_").upper()
        else:
            raise ValueError(f"{config_type.__name__}.{name}: give cli(parse=...) for {hint}")
        parser.add_argument(flag, **kwargs)
    if overrides:
        raise ValueError(f"defaults for fields without options: {sorted(overrides)}")


def config_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of the generated options, as ``TrainConfig`` keyword arguments."""
    return {name: getattr(args, name) for name in names}


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _or_none(kind: type) -> Callable[[str], Any]:
    """An empty value means None (``--image-cache ''`` turns the cache off)."""

    def parse(text: str) -> Any:
        return kind(text) if text else None

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse
