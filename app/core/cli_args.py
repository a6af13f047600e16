"""Command-line flags generated from a pydantic model, so no CLI keeps its own copy of a parameter set.

`add_model_arguments(parser, Model)` adds `--field-name` for each field (choices from a Literal,
`--x/--no-x` for a bool, the description and default as help); `given_values(args, Model)` returns
only the flags the user passed, for `Model.model_validate` (the model's own bounds and defaults
apply) or for an HTTP body (the server's defaults apply).
"""

from __future__ import annotations

import argparse
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel


def _plain(annotation: Any) -> Any:
    """`int` from `Annotated[int, ...] | None`, `Literal[...]` kept as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def add_model_arguments(
    parser: argparse.ArgumentParser, model: type[BaseModel], flags: dict[str, str] | None = None
) -> None:
    """`--field-name` for each field of `model`; `flags` renames some (`{"model_name": "--model"}`)."""
    for name, field in model.model_fields.items():
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        annotation = _plain(field.annotation)
        default = "" if field.is_required() else f" (default: {field.default})"
        help_text = f"{field.description or name}{default}"
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif get_origin(annotation) is Literal:
            parser.add_argument(flag, choices=get_args(annotation), required=field.is_required(), **options)
        else:
            parser.add_argument(flag, type=annotation, required=field.is_required(), **options)


def given_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields among the parsed flags: those the user gave, nothing else."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
