"""The text side of digits-scenes: how a scene is asked for, and the T5 tokenizer over those words.

Two formats, both naming the digits in place order (top left, top right, bottom left, bottom right):
- grid: the numerals as the scene lays them out, rows split by a slash — "7 3 / 1 9";
- words: each digit's name and its place — "seven top left, three top right, one bottom left, nine
  bottom right".
The order is fixed in both: the model reads a digit's place from where it stands in the prompt (T5's
relative position bias sees the slash or the place words beside it). The empty prompt is the
unconditional one, as in the PixArt pipelines. The tokenizer is a T5 (SentencePiece-style Unigram)
tokenizer built here: every prompt word is one piece, any other text falls back to single characters
(or <unk>), and nothing is downloaded.
"""

from __future__ import annotations

import torch

from ditserve.models.digits.data import CLASS_NAMES
from ditserve.models.digits.scenes import PLACES
from ditserve.models.digits.t5_text import word_tokenizer

FORMATS = ("grid", "words")
MAX_TOKENS = 20
"""The encoder's window (`max_sequence_length`): the words format is 15 pieces plus </s>."""


def prompt_for(labels: list[int], fmt: str) -> str:
    """The prompt in format `fmt` ("grid" or "words") for a scene whose digits are `labels` in place order."""
    if fmt == "grid":
        return f"{labels[0]} {labels[1]} / {labels[2]} {labels[3]}"
    return ", ".join(f"{CLASS_NAMES[label]} {place}" for label, place in zip(labels, PLACES, strict=True))


def sample_prompts(labels: torch.Tensor, drop: float, generator: torch.Generator) -> list[str]:
    """One prompt per scene (labels (N, 4)) in a random format; with probability `drop` the empty one instead."""
    formats = torch.randint(0, len(FORMATS), (labels.shape[0],), generator=generator)
    dropped = torch.rand(labels.shape[0], generator=generator) < drop
    return [
        "" if skip else prompt_for(scene, FORMATS[k])
        for scene, k, skip in zip(labels.tolist(), formats.tolist(), dropped.tolist(), strict=True)
    ]


def example_labels(n: int = 20) -> list[list[int]]:
    """`n` scenes in which every digit appears in every place equally often (place p of scene i holds
    (i + 3p) mod 10, so neighbours differ): what calibration, the baseline and the tests prompt with."""
    return [[(i + 3 * p) % len(CLASS_NAMES) for p in range(len(PLACES))] for i in range(n)]


def example_prompts() -> list[str]:
    """The checkpoint's `example_prompts.json`: `example_labels()` in both formats, alternating."""
    return [prompt_for(scene, FORMATS[i % len(FORMATS)]) for i, scene in enumerate(example_labels())]


def build_tokenizer():
    """The T5 tokenizer over the words of every example prompt in both formats."""
    return word_tokenizer((prompt_for(scene, fmt) for fmt in FORMATS for scene in example_labels()), MAX_TOKENS)
