"""The one validation path of both transports: REST JSON bytes or a gRPC message become a checked body.

Both go through `validate`, which bounds the nesting, refuses non-finite numbers anywhere (also inside a
strategy override's free-form fields) and then applies the body's strict schema (no "20" or `true` for
an int). A malformed request is a `RequestError` (400 / INVALID_ARGUMENT) naming the field, never an
error inside the model: these checks run before anything is queued.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel

from ditserve.errors import RequestError
from ditserve.serving.schemas import GenerateBody

MAX_DEPTH = 8
"""Deepest nesting a body may have (the deepest real one, a list inside a strategy override, is 3)."""


def parse_json(raw: bytes) -> dict:
    """A JSON object from a request body: duplicate keys, NaN/Infinity and other non-JSON refused."""
    try:
        data = json.loads(raw, object_pairs_hook=_object_without_duplicates, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestError("body", f"nested deeper than {MAX_DEPTH} levels") from None
    except RequestError:  # from the hooks below
        raise
    except ValueError as err:  # UnicodeDecodeError included
        raise RequestError("body", f"is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise RequestError("body", f"must be a JSON object, not {type(data).__name__}")
    return data


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    data: dict = {}
    for key, value in pairs:
        if key in data:
            raise RequestError(key, "appears twice in one object; send each field once")
        data[key] = value
    return data


def _refuse_constant(name: str):
    raise RequestError("body", f"{name} is not a number JSON allows; send finite numbers only")


def check_tree(data: dict) -> None:
    """Depth at most `MAX_DEPTH` and every number finite, anywhere in `data` (iterative: no recursion)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, str(key)) for key, value in data.items()]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError(path.split(".")[0], f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(path, f"must be a finite number (got {value})")
        if isinstance(value, dict):
            stack.extend((v, depth + 1, f"{path}.{k}") for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{path}.{i}") for i, v in enumerate(value))


def validate(data: dict, schema: type[BaseModel] = GenerateBody) -> Any:
    """`data` checked for depth and finite numbers, then validated against `schema` (strict types)."""
    check_tree(data)
    return schema.model_validate(data)


def from_json(raw: bytes, schema: type[BaseModel] = GenerateBody) -> Any:
    """A REST body, checked: what `POST /generate`, `/tasks` and the OpenAI route read."""
    return validate(parse_json(raw), schema)


def from_proto(message) -> GenerateBody:
    """A gRPC `GenerateRequest`, checked like a REST body (every enum included)."""
    from ditserve.v1 import diffusion_pb2 as pb

    fields: dict[str, Any] = {"num_images": message.num_images or 1, "preview_every": message.preview_every}
    if message.model:
        fields["model"] = message.model
    subject = message.WhichOneof("subject")
    if subject is not None:
        fields[subject] = getattr(message, subject)
    for name in ("steps", "guidance_scale", "seed", "height", "width"):
        if message.HasField(name):
            fields[name] = getattr(message, name)
    formats = {pb.IMAGE_FORMAT_UNSPECIFIED: "png", pb.IMAGE_FORMAT_PNG: "png", pb.IMAGE_FORMAT_RAW_F32: "raw"}
    if message.format not in formats:
        names = ", ".join(pb.ImageFormat.Name(v) for v in formats)
        raise RequestError("format", f"unknown image format {message.format}; one of {names}")
    fields["format"] = formats[message.format]
    for section in ("sampler", "cache"):  # strategy overrides
        if message.HasField(section):
            strategy = getattr(message, section)
            fields[section] = {"name": strategy.name or "none", **_struct(strategy.fields)}  # unset name: as REST
    return validate(fields)


def _struct(struct) -> dict:
    """A protobuf Struct as plain Python, without json_format (which fails on NaN with an internal error)."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":  # Struct numbers are doubles; integral ones were meant as ints (steps, orders)
        number = value.number_value
        return int(number) if number.is_integer() else number
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None
