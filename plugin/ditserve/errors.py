"""The errors ditserve raises on purpose, one class per kind of mistake, each saying what to change.

Transports map them to status codes: `ConfigError` and `PlanError` stop a model from loading;
`RequestError` is HTTP 400 / gRPC INVALID_ARGUMENT; `Cancelled` ends a request the client gave up on.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A model config that cannot be used. `problems` lists one sentence per bad field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


class PlanError(ValueError):
    """A valid plan that cannot run on this model (wrong prediction type, missing calibration, ...)."""


class RequestError(ValueError):
    """A request outside the model's limits; `field` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class Cancelled(RuntimeError):
    """A request stopped between two denoising steps because its client cancelled or its deadline passed."""

    def __init__(self, steps_done: int, reason: str = "cancelled") -> None:
        self.steps_done = steps_done
        self.reason = reason
        super().__init__(f"{reason} after {steps_done} steps")
