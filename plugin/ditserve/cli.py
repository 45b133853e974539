"""The `ditserve` command: generate images (or videos), list strategies, serve a model.

ditserve generate --prompt seven -o seven.png
ditserve generate --config builtin:digits-video --prompt "a seven moving left" -o seven.webp
ditserve strategies
ditserve tune --config model.yaml --target-psnr 35 --steps 20,28,50 --out tuned.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CONFIG = "builtin:digits-dit"
REQUEST_OPTIONS = (
    "prompt", "class_label", "steps", "guidance_scale", "seed", "num_images", "height", "width", "num_frames", "lora",
    "lora_scale",
)  # fmt: skip
"""`generate`'s options that are the request fields of the same name."""


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ditserve.config import load_config
    from ditserve.images import to_pil
    from ditserve.parallel.executor import open_executor
    from ditserve.request import GenerationRequest
    from ditserve.serving.video_files import MIME_TYPES

    engine = open_executor(load_config(args.config))  # a multi-process plan spawns its ranks
    request = GenerationRequest(
        **{name: getattr(args, name) for name in REQUEST_OPTIONS},
        sampler={"name": args.sampler} if args.sampler else None,
    )
    with tqdm(total=None, unit="step", desc=engine.config.model.name, disable=args.quiet) as bar:

        def on_progress(event) -> None:
            bar.total = event.total
            bar.update(event.step - bar.n)

        try:
            result = engine.generate(request, on_progress=on_progress)
        finally:
            engine.close()
    out = Path(args.output)
    if result.videos is not None and out.suffix[1:] not in MIME_TYPES:
        out = out.with_suffix(".webp")  # the default out.png names an image
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(result.seeds) == 1 else [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in result.seeds]
    if result.videos is None:
        for image, path in zip(to_pil(result.images, args.upscale), paths, strict=True):
            image.save(path)
    else:
        write_videos(result.videos, paths, args.upscale)
    stats = result.stats
    summary = {
        "videos" if result.videos is not None else "images": [str(p) for p in paths],
        "seeds": result.seeds,
        "steps": stats.steps,
        "model_evaluations": stats.model_evaluations,
        "block_evaluations": stats.block_evaluations,
        "block_evaluations_full": stats.block_evaluations_full,
        "seconds": {k: round(v, 3) for k, v in stats.seconds.items()},
    }
    print(json.dumps(summary, indent=1))
    return 0


def write_videos(videos, paths: list[Path], upscale: int) -> None:
    """Each video (frames, C, H, W) in [0, 1] as the file its path's suffix names (mp4, webp or gif), 8 fps."""
    from ditserve.serving.video_files import encode

    for video, path in zip(videos, paths, strict=True):
        if upscale > 1:
            video = video.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
        path.write_bytes(encode(video, path.suffix[1:], fps=8, max_bytes=2**40))


def cmd_strategies(args: argparse.Namespace) -> int:
    from ditserve.registry import REGISTRIES

    listing = {}
    for section, registry in REGISTRIES.items():
        if args.kind and section != args.kind:
            continue
        listing[section] = {}
        for name, cls in registry:
            fields = {
                field_name: {
                    "type": _type_name(info.annotation),
                    "default": info.default if info.is_required() is False else None,
                    "doc": info.description or "",
                }
                for field_name, info in cls.Config.model_fields.items()
                if field_name != "name"
            }
            listing[section][name] = {"about": cls.describe(), "origin": registry.origin(name), "fields": fields}
    if args.json:
        print(json.dumps(listing, indent=1, default=str))
        return 0
    for section, entries in listing.items():
        print(f"{section}:")
        for name, entry in entries.items():
            print(f"  {name:<16} {entry['about']}")
            for field_name, field in entry["fields"].items():
                doc = f"  — {field['doc']}" if field["doc"] else ""
                print(f"      {field_name}: {field['type']} = {field['default']!r}{doc}")
    return 0


def _type_name(annotation) -> str:
    """`int`, `bool | None`, `'a' | 'b' | None`: the annotation as a reader would write it."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the BentoML service (REST on --port, gRPC on --grpc-port) in this process's place."""
    import os

    from ditserve.config import load_config

    config = args.config
    if not config.startswith("builtin:"):
        config = str(Path(config).resolve())
    load_config(config)  # a bad config fails here, with its problems listed, before the server starts
    env = dict(os.environ, DITSERVE_CONFIG=config, DITSERVE_GRPC_HOST=args.host, DITSERVE_GRPC_PORT=str(args.grpc_port))
    if args.warmup_rounds is not None:
        env["DITSERVE_WARMUP_ROUNDS"] = str(args.warmup_rounds)
    command = [sys.executable, "-m", "bentoml", "serve", "ditserve.serving.service:DiffusionServer",
               "--host", args.host, "--port", str(args.port)]  # fmt: skip
    print(f"ditserve: serving {config} on http://{args.host}:{args.port} and grpc {args.host}:{args.grpc_port}")
    sys.stdout.flush()
    os.execve(sys.executable, command, env)
    return 0  # not reached: the server replaced this process


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run the calibration a strategy needs and write it into the model's YAML (`ditserve/calibrate.py`);
    with `--auto-steps`, the fewest steps at which a sampler meets a PSNR target."""
    from ditserve.calibrate import calibrate, config_file
    from ditserve.errors import PlanError

    section, name = next(
        (s, n) for s, n in (("cache", args.cache), ("sampler", args.sampler), ("quant", args.quant)) if n
    )
    if args.auto_steps is not None:
        if section != "sampler":
            raise PlanError("--auto-steps goes with --sampler")
        fields = auto_steps(args.config, name, args.samples, args.auto_steps)
    else:
        fields = calibrate(args.config, section, name, args.samples, args.out)
    print(f"ditserve: wrote plan.{section} {name} {json.dumps(fields)} into {config_file(args.config)}")
    return 0


def auto_steps(config: str, sampler: str, samples: int | None, target_psnr: float) -> dict:
    """Find the fewest steps at which `sampler` reaches `target_psnr` dB against its configured steps, and
    write them into the YAML's plan.sampler."""
    from ditserve.calibrate import DEFAULT_SAMPLES, calibration_engine, settings_in_yaml, write_plan_section
    from ditserve.config import load_config
    from ditserve.registry import SAMPLERS
    from ditserve.sampling.auto_steps import fewest_steps

    if samples is None:
        samples = getattr(SAMPLERS.get(sampler), "calibration_samples", DEFAULT_SAMPLES)
    settings = settings_in_yaml(config, "sampler", sampler)
    engine = calibration_engine(load_config(config), "sampler")
    steps = fewest_steps(engine, {"name": sampler, **settings}, target_psnr, samples)
    write_plan_section(config, "sampler", sampler, {"steps": steps})
    return {"steps": steps}


def cmd_tune(args: argparse.Namespace) -> int:
    """Search sampler × cache per step count for the fastest plan that keeps --target-psnr (`ditserve/tune.py`)
    and write the tuned plans where a model config's `plan.tuned` can name them."""
    from ditserve.config import load_config
    from ditserve.tune import tune

    config = load_config(args.config)
    band = None if args.guidance_band is None else tuple(float(g) for g in args.guidance_band.split(","))
    steps = [int(s) for s in args.steps.split(",")]
    tuned = tune(config, args.target_psnr, steps, args.budget_minutes, band, args.pairs)  # type: ignore[arg-type]
    out = Path(args.out or f"{config.model.name}-tuned.yaml")
    out.write_text(tuned.to_yaml())
    for plan in tuned.plans:
        chosen = {s.name: s.model_dump(mode="json", exclude_defaults=True) for s in (plan.sampler, plan.cache)}
        print(f"{plan.steps} steps: {json.dumps(chosen)} {json.dumps(plan.measured)}")
    print(f"ditserve: {tuned.search['candidates']} candidates in {tuned.search['seconds']:.0f} s; wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditserve", description="Serve diffusion transformers fast.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images (PNGs) or, for a video model, videos (WebP, GIF, MP4)")
    gen.add_argument("--config", default=DEFAULT_CONFIG, help="model config YAML or builtin:<name>")
    target = gen.add_mutually_exclusive_group(required=True)
    target.add_argument("--prompt", help='text, or a class name for class-conditional models ("seven", "7")')
    target.add_argument("--class-label", type=int, help="class id for class-conditional models")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the plan's)")
    gen.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: the model's)")
    gen.add_argument("--seed", type=int, help="seed of the first image; image k uses seed+k (default: random)")
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--height", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--num-frames", type=int, help="frames per video (video models; default: the model's)")
    gen.add_argument("--sampler", help="override the plan's sampler by name")
    gen.add_argument("--lora", help="a LoRA adapter of the model by name (its directory's loras/<name>/)")
    gen.add_argument("--lora-scale", type=float, help="how strongly the adapter applies, 0-2 (default 1)")
    gen.add_argument("--upscale", type=int, default=1, help="enlarge the PNG by pixel repetition")
    gen.add_argument(
        "-o",
        "--output",
        default="out.png",
        help="PNG path (a video: .webp, .gif or .mp4); several get -<seed> suffixes",
    )
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=cmd_generate)

    strat = sub.add_parser("strategies", help="list registered strategies and their config fields")
    strat.add_argument("--kind", choices=["cache", "sampler", "quant", "parallel"])
    strat.add_argument("--json", action="store_true")
    strat.set_defaults(func=cmd_strategies)

    serve = sub.add_parser("serve", help="serve a model over REST and gRPC")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help="model config YAML or builtin:<name>")
    serve.add_argument("--host", default="127.0.0.1", help="bind address of both APIs (default loopback only)")
    serve.add_argument("--port", type=int, default=3000, help="REST port")
    serve.add_argument("--grpc-port", type=int, default=50051, help="gRPC port")
    serve.add_argument("--warmup-rounds", type=int, help="warm-up batches before /readyz says ready (default 1)")
    serve.set_defaults(func=cmd_serve)

    cal = sub.add_parser("calibrate", help="calibrate a strategy on a model and write it into the model's YAML")
    what = cal.add_mutually_exclusive_group(required=True)
    what.add_argument("--cache", help="cache strategy name (e.g. teacache)")
    what.add_argument(
        "--quant", help="quantizer name (w8a8, svdquant, mixed): statistics into --out, named in plan.quant"
    )
    what.add_argument(
        "--sampler", help="sampler name (dpm-solver-v3, dc-solver; any with --auto-steps): into plan.sampler"
    )
    cal.add_argument(
        "--auto-steps",
        type=float,
        metavar="PSNR",
        help="with --sampler: store the fewest steps reaching this PSNR (dB) against its configured steps",
    )
    cal.add_argument(
        "--out", help="with --quant: statistics file (default <model>-<quant>.safetensors beside the YAML)"
    )
    cal.add_argument("--config", default=DEFAULT_CONFIG, help="model config YAML or builtin:<name>")
    cal.add_argument(
        "--samples",
        type=int,
        help="uncached requests to observe (fixed seeds; default 8, with --sampler its own: dpm-solver-v3 32)",
    )
    cal.set_defaults(func=cmd_calibrate)

    tun = sub.add_parser("tune", help="find the fastest sampler and cache per step count that keep a PSNR target")
    tun.add_argument("--config", default=DEFAULT_CONFIG, help="model config YAML or builtin:<name>")
    tun.add_argument("--target-psnr", type=float, required=True, help="mean PSNR (dB) against the plan unaccelerated")
    tun.add_argument("--steps", default="20,28,50", help="request step counts to tune for (comma-separated)")
    tun.add_argument("--budget-minutes", type=float, default=15.0, help="bound on the whole search's time")
    tun.add_argument("--guidance-band", metavar="LOW,HIGH", help="guidance the plans serve (default: the model's)")
    tun.add_argument("--pairs", type=int, default=3, help="alternating timing pairs per confirmed candidate")
    tun.add_argument("--out", help="tuned-plans YAML for plan.tuned (default ./<model>-tuned.yaml)")
    tun.set_defaults(func=cmd_tune)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ditserve.errors import Cancelled, ConfigError, PlanError, RequestError
    from ditserve.registry import RegistryError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, PlanError, RequestError, RegistryError, Cancelled) as err:
        print(f"ditserve: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
