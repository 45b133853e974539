"""The text side of digits-video: how a moving digit is asked for, and the tokenizer over those words.

A prompt names the digit and its motion, in one of `TEMPLATES` ("a seven moving left", "7 moving left",
"the digit seven going left"), so the model reads words and numerals alike. The empty prompt is the
unconditional one, as in the Wan pipelines.
"""

from __future__ import annotations

import torch

from ditserve.models.digits.data import CLASS_NAMES
from ditserve.models.digits.moving import MOTIONS
from ditserve.models.digits.t5_text import word_tokenizer

TEMPLATES = ("{article} {name} moving {motion}", "{digit} moving {motion}", "the digit {name} going {motion}")
MAX_TOKENS = 8
"""The encoder's window (`max_sequence_length`): the longest prompt is 5 pieces plus </s>."""


def prompt_for(label: int, motion: int, template: int = 0) -> str:
    """The prompt `TEMPLATES[template]` for digit `label` moving as `MOTIONS` row `motion`."""
    name = CLASS_NAMES[label]
    return TEMPLATES[template].format(
        name=name, digit=str(label), article="an" if name[0] in "aeiou" else "a", motion=list(MOTIONS)[motion]
    )


def sample_prompts(labels: torch.Tensor, motions: torch.Tensor, drop: float, generator: torch.Generator) -> list[str]:
    """One prompt per clip in a random template; with probability `drop` the empty one instead."""
    templates = torch.randint(0, len(TEMPLATES), (labels.shape[0],), generator=generator)
    dropped = torch.rand(labels.shape[0], generator=generator) < drop
    rows = zip(labels.tolist(), motions.tolist(), templates.tolist(), dropped.tolist(), strict=True)
    return ["" if skip else prompt_for(label, motion, k) for label, motion, k, skip in rows]


def example_clips(n: int = 40) -> list[tuple[int, int]]:
    """`n` (label, motion) pairs in which every digit meets every motion as evenly as `n` allows (clip i is
    digit i mod 10 moving as motion (i + i // 10) mod 4): what calibration, the baseline and the tests ask."""
    return [(i % len(CLASS_NAMES), (i + i // len(CLASS_NAMES)) % len(MOTIONS)) for i in range(n)]


def example_prompts() -> list[str]:
    """The checkpoint's `example_prompts.json`: `example_clips()` with the templates in turn."""
    return [prompt_for(label, motion, i % len(TEMPLATES)) for i, (label, motion) in enumerate(example_clips())]


def build_tokenizer():
    """The T5 tokenizer over every prompt of every template."""
    prompts = [
        prompt_for(label, motion, k)
        for label in range(len(CLASS_NAMES))
        for motion in range(len(MOTIONS))
        for k in range(len(TEMPLATES))
    ]
    return word_tokenizer(prompts, MAX_TOKENS)
