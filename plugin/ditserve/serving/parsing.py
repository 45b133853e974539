"""The one validation path of both transports: REST JSON bytes or a gRPC message become a checked body.

Both go through `validate`, which bounds the nesting, refuses non-finite numbers anywhere (also inside a
strategy override's free-form fields) and then applies the body's strict schema (no "20" or `true` for
an int). A malformed request is a `RequestError` (400 / INVALID_ARGUMENT) naming the field, never an
error inside the model: these checks run before anything is queued.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import types
import typing
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
    return validate(decode_images(parse_json(raw)), schema)


IMAGE_FIELDS = ("init_image", "mask")
"""Fields that carry an edit's PNG: base64 text in JSON, bytes in protobuf and forms."""
DATA_URL = re.compile(r"^data:image/png;base64,", re.IGNORECASE)


def decode_images(data: dict) -> dict:
    """`data` with its base64 image fields as bytes (a `data:image/png;base64,` prefix is allowed)."""
    for name in IMAGE_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise RequestError(name, f"must be a base64 string of PNG bytes, not {type(value).__name__}")
        try:
            data[name] = base64.b64decode(DATA_URL.sub("", value, count=1), validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(name, f"is not valid base64 ({err})") from None
    return data


def from_form(items: list[tuple[str, str | bytes]], schema: type[BaseModel]) -> Any:
    """A multipart form (OpenAI's image edits) as (name, text or file bytes) pairs, checked like a JSON body:
    each field once, files only where the schema takes bytes, numbers written as numbers (`n=2`, not `n=two`),
    booleans as `true` or `false`."""
    data: dict[str, Any] = {}
    for name, value in items:
        if name in data:
            raise RequestError(name, "appears twice in the form; send each field once")
        data[name] = value
    for name, value in data.items():
        field = schema.model_fields.get(name)
        if field is None:  # the schema refuses it by name
            continue
        kinds = _kinds(field.annotation)
        if bytes in kinds and not isinstance(value, bytes):
            raise RequestError(name, "must be sent as a file (a form part with a filename)")
        if bytes not in kinds and isinstance(value, bytes):
            raise RequestError(name, "must be a text field, not a file")
        if isinstance(value, str) and bool in kinds:
            if value not in ("true", "false"):
                raise RequestError(name, f"must be true or false (got {value[:40]!r})")
            data[name] = value == "true"
        elif isinstance(value, str) and int in kinds:
            if not re.fullmatch(r"-?\d{1,19}", value):
                raise RequestError(name, f"must be an integer (got {value[:40]!r})")
            data[name] = int(value)
        elif isinstance(value, str) and float in kinds:
            try:
                data[name] = float(value)
            except ValueError:
                raise RequestError(name, f"must be a number (got {value[:40]!r})") from None
    return validate(data, schema)


def _kinds(annotation) -> set[type]:
    """The plain types an annotation allows (`int | None` → {int, NoneType})."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {kind for arg in typing.get_args(annotation) for kind in _kinds(arg)}
    return {annotation} if isinstance(annotation, type) else set()


def from_proto(message) -> GenerateBody:
    """A gRPC `GenerateRequest`, checked like a REST body (every enum included)."""
    from ditserve.v1 import diffusion_pb2 as pb

    fields: dict[str, Any] = {"num_images": message.num_images or 1, "preview_every": message.preview_every}
    if message.model:
        fields["model"] = message.model
    subject = message.WhichOneof("subject")
    if subject is not None:
        fields[subject] = getattr(message, subject)
    for name in (
        "steps",
        "guidance_scale",
        "seed",
        "height",
        "width",
        "strength",
        "lora",
        "lora_scale",
        "approx_cache",
        "num_frames",
    ):
        if message.HasField(name):
            fields[name] = getattr(message, name)
    for name in IMAGE_FIELDS:  # bytes; empty: none
        if getattr(message, name):
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
