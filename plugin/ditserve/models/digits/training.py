"""What the digits training scripts share: the training loop (`fit`) with its learning-rate schedule,
optimizer step with gradient clipping, the EMA of the weights that gets shipped and the progress log;
the command-line options and the training record; how a text model's pipeline is saved. The scripts
differ only in the model and its loss (`train.py`: DDPM epsilon loss on a DiT; `train_flow.py`:
rectified-flow velocity loss on an MMDiT with text encoders; `train_scenes.py`: epsilon loss on PixArt
with a T5 encoder)."""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def repeatable(args: argparse.Namespace) -> None:
    """Seed torch's global generator (it draws the initial weights), make every kernel deterministic and fix
    the thread count: with `fit`'s seeded generator, the same seed gives the same weights byte for byte."""
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)


def fit(
    args: argparse.Namespace,
    modules: nn.Module,
    ema: nn.Module,
    batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    held_out_loss: Callable[[], float],
    train_images: int,
    dropout: str,
) -> dict:
    """Train `modules` for `args.steps` AdamW steps, keeping their EMA in `ema`; returns the training record.

    Each step draws `args.batch_size` indices into the `train_images` training images from one generator
    seeded with `args.seed`, and `batch_loss(indices, generator)` draws the rest of the step's randomness
    from the same generator: one seed fixes the whole run. `held_out_loss()` (of the EMA) goes in the log."""
    optimizer = torch.optim.AdamW(modules.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    log: list[dict] = []
    start = time.perf_counter()
    for step in range(args.steps):
        modules.train()
        loss = batch_loss(torch.randint(0, train_images, (args.batch_size,), generator=gen), gen)
        optimizer_step(optimizer, modules, loss, step, args)
        update_ema(ema, modules, step, args.ema)
        if should_log(step, args):
            log_progress(log, step, args, loss.item(), held_out_loss(), start)
    return training_record(args, dropout, train_images, start, log)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(
    optimizer: torch.optim.Optimizer, model: nn.Module, loss: torch.Tensor, step: int, args: argparse.Namespace
) -> None:
    """Scheduled learning rate, backward, gradient norm clipped to 1, step."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """EMA of the weights, with a warm-up (decay (step+1)/(step+10) at first) so early steps are not frozen in."""
    decay = min(decay, (step + 1) / (step + 10))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)


def should_log(step: int, args: argparse.Namespace) -> bool:
    return (step + 1) % args.log_every == 0 or step + 1 == args.steps


def log_progress(log: list[dict], step: int, args: argparse.Namespace, loss: float, held_out: float, start: float):
    """Append to the record's log and print one line."""
    log.append({"step": step + 1, "train_loss": round(loss, 5), "held_out_loss": round(held_out, 5)})
    elapsed = time.perf_counter() - start
    print(f"step {step + 1}/{args.steps}  loss {loss:.4f}  held-out (EMA) {held_out:.4f}  {elapsed:.0f}s", flush=True)


def parse_args(argv: list[str] | None, doc: str, *, steps: int, batch_size: int, warmup: int, ema: float,
               dropout: str, threads: int, out: str, lr: float = 1e-3) -> argparse.Namespace:  # fmt: skip
    """The options both scripts take, with the script's defaults (its `doc`'s first line describes it);
    `dropout` names the conditioning-dropout option (label or prompt)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--ema", type=float, default=ema)
    parser.add_argument(f"--{dropout}-dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--out", default=out)
    return parser.parse_args(argv)


def training_record(args: argparse.Namespace, dropout: str, train_images: int, start: float, log: list[dict]) -> dict:
    """What `training.json` keeps next to the weights: the settings, the time taken and the loss log."""
    return {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "ema": args.ema,
        f"{dropout}_dropout": getattr(args, f"{dropout}_dropout"),
        "train_images": train_images,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": args.threads,
        "final_held_out_loss": log[-1]["held_out_loss"],
        "log": log,
    }


def train_text_model(
    args: argparse.Namespace,
    build_pipeline: Callable[[], Any],
    trained_modules: Callable[[Any], nn.ModuleDict],
    batch_loss: Callable[[Any, torch.Tensor, torch.Generator], torch.Tensor],
    held_out_loss: Callable[[Any], float],
    train_items: int,
    call_defaults: dict,
    example_prompts: list[str],
) -> dict:
    """Train a text model's pipeline and save its EMA copy; returns the training record.

    Seeds (`repeatable`), builds the pipeline and its EMA copy, trains `trained_modules(pipe)` with `fit` on
    `batch_loss(pipe, indices, generator)` (indices into `train_items` training items), logs
    `held_out_loss(ema_pipe)`, and writes the EMA pipeline with `save_pipeline`."""
    repeatable(args)
    pipe = build_pipeline()
    ema_pipe = copy.deepcopy(pipe)
    modules, ema = trained_modules(pipe), trained_modules(ema_pipe).requires_grad_(False)
    record = fit(
        args, modules, ema, lambda idx, gen: batch_loss(pipe, idx, gen), lambda: held_out_loss(ema_pipe),
        train_items, "prompt",
    )  # fmt: skip
    save_pipeline(ema_pipe, Path(args.out), record, call_defaults, example_prompts)
    return record


def save_pipeline(pipe, out: Path, record: dict, call_defaults: dict, example_prompts: list[str]) -> None:
    """Write a text model's pipeline in diffusers' layout, the call defaults it needs (models/text.py), the training
    record and the prompts calibration uses (calibrate.py)."""
    from ditserve.calibrate import EXAMPLE_PROMPTS_FILE
    from ditserve.models.text import CALL_DEFAULTS_FILE

    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / CALL_DEFAULTS_FILE).write_text(json.dumps(call_defaults, indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / EXAMPLE_PROMPTS_FILE).write_text(json.dumps(example_prompts, indent=1) + "\n")
