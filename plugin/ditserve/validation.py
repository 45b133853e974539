"""pydantic validation with its errors rewritten as `ConfigError` sentences: `field: what is wrong`.

The model config and every strategy's config go through `validate_model`, so an error reads the same
wherever it comes from, names the field by its dotted path, and lists the allowed fields or names.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from ditserve.errors import ConfigError


def validate_model(model: type[BaseModel], data: Any, where: str = "", what: str = "", strict: bool = False) -> Any:
    """`model.model_validate(data)`, with errors rewritten as `ConfigError` sentences under `where`.

    `strict` validates `data` as the JSON a client sent, in pydantic's strict mode: no string or bool
    where a number belongs, while JSON's own conversions (an array for a tuple, an int for a float) stay."""
    try:
        if strict:
            return model.model_validate_json(json.dumps(data, allow_nan=False), strict=True)
        return model.model_validate(data)
    except ValidationError as err:
        prefix = f"{where}." if where else ""
        suffix = f" [{what}]" if what else ""
        problems = []
        for error in err.errors():
            sub = _submodel(model, error["loc"])
            problems.append(prefix + _describe(error, sub) + suffix)
        raise ConfigError(problems) from None


def _describe(error: dict, model: type[BaseModel]) -> str:
    """One pydantic error as `field: what is wrong (allowed: ...)`."""
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(name for name in model.model_fields if name != "name") or "(none)"
        return f"{field}: unknown field; allowed fields: {allowed}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{field}: {error['msg']}{shown}"


def _submodel(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The (nested) model that owns the field at `loc`, so unknown-field errors list its fields."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model
