"""Command-line flags generated from pydantic models, shared by `svdpipe` and `svdpipe bench` (no command here)."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


def _flag_type(annotation: Any) -> tuple[Any, Sequence[str] | None]:
    """argparse type and choices for a pydantic field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin in (typing.Union, types.UnionType) and len(args) == 2:  # e.g. int | Literal["auto"]
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
        other = next((a for a in args if a is not literal), None)
        if literal is not None and other in (int, float):
            return _literal_or(typing.get_args(literal), other), None
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    return annotation, None


def _literal_or(words: tuple[Any, ...], kind: type) -> Any:
    """An argparse type taking one of `words` or a `kind` number."""

    def parse(text: str) -> Any:
        if text in words:
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {' or '.join(map(repr, words))} or a number, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_model_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    aliases: dict[str, str] | None = None,
    skip: set[str] | frozenset[str] = frozenset(),
) -> None:
    """One --kebab-case flag per field; unset flags stay None so the model's own defaults apply."""
    group = parser.add_argument_group(model.__name__)
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = (aliases or {}).get(name, "--" + name.replace("_", "-"))
        kind, choices = _flag_type(field.annotation)
        help_text = field.description or ""
        if field.default_factory is None:
            help_text += f" (default: {field.default})"
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text)


def model_from_args(model: type[BaseModel], args: argparse.Namespace, **overrides: Any) -> Any:
    """`model` from the parsed flags that were given (and `overrides` that are not None)."""
    values = {n: getattr(args, n) for n in model.model_fields if getattr(args, n, None) is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return model(**values)
