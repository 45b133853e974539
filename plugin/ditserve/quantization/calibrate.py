"""`python -m ditserve.quantization.calibrate --config CFG --quant NAME`: run a quantizer's calibration
once and store it, so that loading the model later skips it.

It loads the model unquantized, runs the quantizer's sampling-based calibration (its config comes
from the model config's `plan.quant` when that names the same quantizer, else the defaults, with
`--samples` / `--steps` on top), writes the statistics as safetensors, and prints the `plan.quant`
entry that uses them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def calibrate(config_path: str, quant: str, out: str | None, samples: int | None, steps: int | None) -> Path:
    import torch
    from safetensors.torch import save_file

    from ditserve.config import load_config
    from ditserve.engine import pick_device, resolve_model_path
    from ditserve.errors import PlanError
    from ditserve.models import get_adapter
    from ditserve.registry import QUANTIZERS

    config = load_config(config_path)
    cls = QUANTIZERS.get(quant)
    if not cls.needs_calibration:
        raise PlanError(f"quantizer {quant!r} needs no calibration; calibrated ones: "
                        + ", ".join(n for n, c in QUANTIZERS if c.needs_calibration))  # fmt: skip
    fields = config.plan.quant.model_dump() if config.plan.quant.name == quant else {"name": quant}
    fields.pop("calibration", None)
    if samples is not None:
        fields["calibration_samples"] = samples
    if steps is not None:
        fields["calibration_steps"] = steps
    quantizer = cls(QUANTIZERS.parse(fields, "plan.quant"))
    adapter = get_adapter(config.model.family)
    model = adapter.load(resolve_model_path(config.resolved_path()), getattr(torch, config.model.dtype),
                         pick_device(config.model.device))  # fmt: skip
    stats = quantizer.calibrate(model)
    path = Path(out or f"calibration/{config.model.name}-{quant}.safetensors").absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: t.detach().cpu().contiguous() for name, t in stats.items()}, str(path))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, shared with `ditserve calibrate --quant` where the CLI offers it."""
    parser.add_argument("--config", required=True, help="model config YAML, or builtin:<name>")
    parser.add_argument("--quant", required=True, help="quantizer to calibrate (w8a8, svdquant, mixed)")
    parser.add_argument("--out", help="where to write the statistics (default calibration/<model>-<quant>.safetensors)")
    parser.add_argument("--samples", type=int, help="images to sample (default: the quantizer's config)")
    parser.add_argument("--steps", type=int, help="sampler steps per image (default: the quantizer's config)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ditserve.quantization.calibrate", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    path = calibrate(args.config, args.quant, args.out, args.samples, args.steps)
    print(f"wrote {path}\nuse it with:  plan: {{quant: {{name: {args.quant}, calibration: {path}}}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
