"""Every registered sampler on the embedded models at a fixed budget of model evaluations: quality vs NFE.

python benchmarks/sampling.py [--per-class 5] [--nfe 5,8,10,15,20,50] [--only ddim,dpm-solver-v3]

For each embedded model with weights (digits-dit; digits-flow once trained), every sampler in
SAMPLERS runs the same class-conditioned requests (`--per-class` images of each class, fixed seeds,
the model's default guidance) at each NFE (model evaluations per image: Heun gets (NFE + 1)/2 steps;
the parallel samplers count their sequential-equivalent steps and also report their rounds). Reported:
the Fréchet distance of the digits classifier's features to the held-out digits, the classifier's
accuracy, PSNR against a 200-NFE reference of the same seeds (the model's reference ODE sampler:
DDIM for epsilon models, flow Euler for flow models), sequential model rounds, and the wall time of the
run (one run per cell on a shared 2-core machine: read it as a rough ratio). Samplers that need
calibration are calibrated first on seeds the measurement does not use. Writes
benchmarks/results/sampling.md (+ .json) and sampling-nfe.png, and prints the issue's goals with
PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ditserve.config import load_config
from ditserve.engine import Engine, resolve_model_path
from ditserve.errors import PlanError, RequestError
from ditserve.models.digits.data import load_split
from ditserve.quality import load_classifier, mean_finite, psnr
from ditserve.quality.frechet import frechet_distance
from ditserve.registry import SAMPLERS
from ditserve.request import GenerationRequest
from ditserve.sampling.base import prediction_type

RESULTS = Path(__file__).parent / "results"
SEED, REFERENCE_NFE = 200_000, 200
FIRST = ["ddim", "dpm-solver++", "dpm-solver-v3", "paradigms", "parataa", "dc-solver", "unipc"]
"""Samplers the goals need run first, so a run cut short still decides them."""
PARALLEL_GOAL_STEPS = (20, 50)
"""Step counts at which the parallel samplers' goal is judged: Picard iterations need many steps to save
rounds (at 5–10 steps a window of Picard iterations costs about as many rounds as the steps themselves);
the other step counts are printed as information."""


def sampler_specs(name: str, nfe: int, calibrated: dict) -> list[tuple[str, dict]]:
    """(label, sampler spec) rows for `name` at `nfe` model evaluations per image."""
    spec = {"name": name, "steps": nfe, **calibrated.get(name, {})}
    if name == "heun":
        spec["steps"] = (nfe + 1) // 2
    if name == "paradigms":
        return [("paradigms (sequential)", {**spec, "window": 1}), ("paradigms", {**spec, "window": 16})]
    if name == "sampler-scheduler":
        stages = [{"sampler": {"name": "paradigms", "window": 1}, "until": 0.3},
                  {"sampler": {"name": "dc-solver", **calibrated.get("dc-solver", {})}}]  # fmt: skip
        spec["stages"] = stages
    return [(name, spec)]


def calibrate_all(config_path: Path, samples: int | None) -> dict:
    """Calibrated fields per sampler that needs them, computed on a copy of the model's YAML."""
    from ditserve.calibrate import calibrate

    found = {}
    for name, cls in SAMPLERS:
        if getattr(cls, "needs_calibration", False):
            started = time.perf_counter()
            try:
                found[name] = calibrate(str(config_path), "sampler", name, samples)
            except PlanError as err:  # e.g. a sampler for another prediction type
                print(f"  {name}: not calibrated ({err})")
                continue
            print(f"  calibrated {name} in {time.perf_counter() - started:.0f}s", flush=True)
    return found


def run(engine: Engine, spec: dict, per_class: int, steps: int | None = None):
    from ditserve.models.digits.prompts import prompt_for

    text = engine.adapter.conditioning == "text"  # digits-flow: "a handwritten seven"
    requests = [GenerationRequest(prompt=prompt_for(c, 3) if text else None, class_label=None if text else c,
                                  num_images=per_class, seed=SEED + 1000 * c, steps=steps, sampler=spec)
                for c in range(10)]  # fmt: skip
    started = time.perf_counter()
    results = engine.generate_batch(requests)
    seconds = time.perf_counter() - started
    return torch.cat([r.images for r in results]) * 2 - 1, results[0].stats, seconds


def measure_model(model: str, args, rows: list[dict]) -> None:
    config = load_config(f"builtin:{model}")
    workdir = Path(tempfile.mkdtemp(prefix=f"sampling-{model}-"))
    source = Path(__file__).parent.parent / "plugin" / "ditserve" / "configs" / f"{model}.yaml"
    shutil.copy(source, workdir / "model.yaml")
    print(f"{model}: calibrating", flush=True)
    calibrated = calibrate_all(workdir / "model.yaml", args.calibration_samples)
    engine = Engine(config.model_copy(update={"limits": config.limits.model_copy(update={"max_steps": 1000})}))
    flow = prediction_type(engine.model.scheduler_config) == "flow"
    reference_name = "flow-euler" if flow else "ddim"
    reference, stats, seconds = run(engine, {"name": reference_name, "steps": REFERENCE_NFE}, args.per_class)
    classifier = load_classifier()
    labels = torch.arange(10).repeat_interleave(args.per_class)
    with torch.no_grad():
        held_out = classifier.features(load_split().held_out_images)
        rows.append({"model": model, "sampler": f"{reference_name} (reference)", "nfe": REFERENCE_NFE,
                     "evaluations": stats.timestep_evaluations, "rounds": stats.model_evaluations,
                     "frechet": frechet_distance(classifier.features(reference), held_out),
                     "accuracy": float((classifier(reference).argmax(dim=1) == labels).float().mean()),
                     "psnr": float("inf"), "seconds": seconds, "images": len(reference)})  # fmt: skip
    # `none` is the checkpoint's own scheduler: DDPM for digits-dit, the same as the `ddpm` row
    names = [n for n in FIRST if n in SAMPLERS] + [n for n, _ in SAMPLERS if n not in FIRST and n != "none"]
    if args.only:
        names = [n for n in names if n in args.only]
    refused: set[str] = set()
    for nfe in args.nfe:  # NFE-major: a run cut short still has every sampler at the first NFEs
        for name in names:
            if name in refused:
                continue
            for label, spec in sampler_specs(name, nfe, calibrated):
                row = {"model": model, "sampler": label, "nfe": nfe, "spec": spec}
                try:
                    images, stats, seconds = run(engine, spec, args.per_class)
                except (PlanError, RequestError, ValueError) as err:
                    row["refused"] = str(err)
                    rows.append(row)
                    refused.add(name)
                    print(f"  {label:24s} NFE {nfe:3d}: refused ({err})", flush=True)
                    break
                with torch.no_grad():
                    predicted = classifier(images).argmax(dim=1)
                    features = classifier.features(images)
                row.update(
                    evaluations=stats.timestep_evaluations // 1,
                    rounds=stats.model_evaluations,
                    frechet=frechet_distance(features, held_out),
                    accuracy=float((predicted == labels).float().mean()),
                    psnr=mean_finite(psnr(images, reference)),
                    seconds=seconds,
                    images=len(images),
                )
                if name in ("paradigms", "parataa"):
                    row["images_t"] = images  # for the PSNR against its sequential run
                rows.append(row)
                print(f"  {label:24s} NFE {nfe:3d}: FD {row['frechet']:.2f} acc {row['accuracy']:.3f} "
                      f"PSNR {row['psnr']:.1f} rounds {row['rounds']} {seconds:.1f}s", flush=True)  # fmt: skip
            write(rows, args)


def goals(rows: list[dict]) -> list[str]:
    lines = []
    for model in sorted({r["model"] for r in rows}):
        cell = {(r["sampler"], r["nfe"]): r for r in rows if r["model"] == model and "refused" not in r}
        ddim50 = cell.get(("ddim", 50))
        at10 = [r for (s, n), r in cell.items() if n == 10]
        if ddim50 and at10:
            best = min(at10, key=lambda r: r["frechet"])
            ok = best["frechet"] <= 1.1 * ddim50["frechet"]
            lines.append(f"{'PASS' if ok else 'FAIL'} {model}: best sampler at 10 NFE ({best['sampler']}, FD "
                         f"{best['frechet']:.2f}) within 10% of DDIM-50's FD {ddim50['frechet']:.2f}")  # fmt: skip
        for nfe in (5, 8):
            v3, pp = cell.get(("dpm-solver-v3", nfe)), cell.get(("dpm-solver++", nfe))
            if v3 and pp:
                ok = v3["psnr"] > pp["psnr"]
                fd = "lower" if v3["frechet"] < pp["frechet"] else "higher"
                lines.append(f"{'PASS' if ok else 'FAIL'} {model}: DPM-Solver-v3 better than DPM-Solver++ at {nfe} "
                             f"NFE: PSNR {v3['psnr']:.1f} vs {pp['psnr']:.1f} dB (FD {fd}: {v3['frechet']:.2f} vs "
                             f"{pp['frechet']:.2f})")  # fmt: skip
        for label, name in (("ParaDiGMS", "paradigms"), ("ParaTAA", "parataa")):
            for nfe in sorted({n for s, n in cell if s == name}):
                par, seq = cell.get((name, nfe)), cell.get(("paradigms (sequential)", nfe))
                if par and seq:
                    lines.append(parallel_goal(model, label, nfe, par, seq))
    return lines


def parallel_goal(model: str, label: str, nfe: int, par: dict, seq: dict) -> str:
    """The parallel-sampling goal line: judged at PARALLEL_GOAL_STEPS, information elsewhere."""
    fewer = seq["rounds"] / par["rounds"]
    close = par.get("psnr_vs_sequential", float("nan"))
    verdict = ("PASS" if close >= 35 and fewer >= 2 else "FAIL") if nfe in PARALLEL_GOAL_STEPS else "info"
    return (f"{verdict} {model}: {label} at {nfe} steps: {close:.1f} dB from its sequential sampler (goal ≥ 35), "
            f"{fewer:.1f}x fewer sequential rounds ({par['rounds']} vs {seq['rounds']}; goal ≥ 2x); wall "
            f"{par['seconds']:.1f}s vs {seq['seconds']:.1f}s sequential (CPU: the batched window costs its full "
            "work)")  # fmt: skip


def to_markdown(rows: list[dict], args) -> str:
    out = ["# Samplers on the embedded models: quality vs NFE", "",
           f"`python benchmarks/sampling.py --per-class {args.per_class}`: {10 * args.per_class} class-conditioned "
           f"samples per cell ({args.per_class} per digit, seeds {SEED} + 1000·class + k), the model's default "
           "guidance (4 for digits-dit). FD: Fréchet distance of the digits classifier's features to the "
           f"held-out digits (lower is better; {10 * args.per_class} samples make it noisy: compare within "
           f"the table). PSNR: against the {REFERENCE_NFE}-NFE reference of the same seeds (DDIM for "
           "epsilon models, flow Euler for flow models). Rounds: sequential model calls (the parallel samplers "
           "batch several steps per call; evaluations: the work, per image). Wall: one run per cell on a 2-core "
           "machine shared with other jobs "
           "(no repeats; read ratios roughly). Calibrated samplers were calibrated in the same run on "
           f"{args.calibration_samples or 'their default number of'} other seeds (dpm-solver-v3: 32, dc-solver: 8; "
           "digits-flow on its own example prompts).", ""]  # fmt: skip
    out += ["## Goals", "", "DPM-Solver-v3 vs DPM-Solver++: judged on PSNR against the 200-NFE reference, i.e. "
            "on how closely each solves the model's ODE; FD is shown but not judged: on this few samples it is noisy "
            "and it rises with NFE for every solver (see each sampler's rows and the reference row), so a lower FD "
            "at 5–8 NFE marks a less converged sample, not a better solver. ParaDiGMS / ParaTAA: "
            f"judged at {' and '.join(map(str, PARALLEL_GOAL_STEPS))} steps (parallel sampling saves rounds only "
            "over many steps); the other step counts are information.", "",
            *[f"- {line}" for line in goals(rows)], ""]  # fmt: skip
    for model in sorted({r["model"] for r in rows}):
        out += [f"## {model}", "", "| sampler | NFE | evaluations | rounds | FD | accuracy | PSNR dB | wall s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        mine = [r for r in rows if r["model"] == model]
        order = {name: k for k, name in enumerate(dict.fromkeys(r["sampler"] for r in mine))}
        for r in sorted(mine, key=lambda r: (order[r["sampler"]], r["nfe"])):
            if "refused" in r:
                out.append(f"| {r['sampler']} | – | – | – | refused: {r['refused'][:80]} | | | |")
                continue
            out.append(f"| {r['sampler']} | {r['nfe']} | {r['evaluations']} | {r['rounds']} | {r['frechet']:.2f} | "
                       f"{r['accuracy']:.3f} | {r['psnr']:.1f} | {r['seconds']:.1f} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def write(rows: list[dict], args) -> None:
    for r in rows:  # ParaDiGMS and ParaTAA against their sequential sampler (same seeds, same steps)
        if r["sampler"] in ("paradigms", "parataa") and "refused" not in r:
            seq = next((s for s in rows if s["model"] == r["model"] and s["nfe"] == r["nfe"]
                        and s["sampler"] == "paradigms (sequential)" and "images_t" in s), None)  # fmt: skip
            if seq is not None:
                r["psnr_vs_sequential"] = mean_finite(psnr(r["images_t"], seq["images_t"]))
    RESULTS.mkdir(exist_ok=True)
    clean = [{k: v for k, v in r.items() if k != "images_t"} for r in rows]
    (RESULTS / "sampling.json").write_text(json.dumps(clean, indent=1))
    (RESULTS / "sampling.md").write_text(to_markdown(rows, args))
    plot(clean)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.5 * len(models)), squeeze=False)
    for row_axes, model in zip(axes, models, strict=True):
        for sampler in dict.fromkeys(r["sampler"] for r in rows if r["model"] == model):
            cells = sorted((r["nfe"], r) for r in rows if r["model"] == model and r["sampler"] == sampler
                           and "refused" not in r)  # fmt: skip
            if not cells:
                continue
            nfe = [n for n, _ in cells]
            row_axes[0].plot(nfe, [r["frechet"] for _, r in cells], marker="o", label=sampler)
            row_axes[1].plot(nfe, [min(r["psnr"], 60) for _, r in cells], marker="o", label=sampler)
        for ax, what in zip(row_axes, ("Fréchet distance (lower is better)", "PSNR vs 200-NFE reference, dB"),
                            strict=True):  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("NFE (model evaluations per image)")
            ax.set_title(f"{model}: {what}")
            ax.grid(alpha=0.3)
        row_axes[0].set_yscale("log")
        row_axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "sampling-nfe.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=5, help="images per digit per cell (default 5: 50)")
    parser.add_argument("--nfe", default="10,5,8,50,15,20", help="model evaluations per image, in the order run")
    parser.add_argument("--only", help="comma-separated sampler names")
    parser.add_argument("--models", default="digits-dit,digits-flow", help="embedded models to measure")
    parser.add_argument(
        "--calibration-samples", type=int, help="calibration requests (default: each sampler's own count)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads spin-wait, 100x slower)",
    )
    args = parser.parse_args()
    args.nfe = [int(n) for n in args.nfe.split(",")]
    args.only = set(args.only.split(",")) if args.only else None
    args.models = args.models.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = RESULTS / "sampling.json"  # rows of models not measured in this run are kept
    rows = [r for r in json.loads(previous.read_text()) if r["model"] not in args.models] if previous.is_file() else []
    for model in args.models:
        try:
            resolve_model_path(f"builtin:{model}")
            load_config(f"builtin:{model}")
        except Exception as err:  # noqa: BLE001  a model not trained yet is reported, not fatal
            print(f"{model}: skipped ({err})")
            continue
        measure_model(model, args, rows)
    for line in goals(rows):
        print(line)


if __name__ == "__main__":
    main()
