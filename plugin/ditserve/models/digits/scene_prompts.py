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
    """A T5 tokenizer (Unigram, Metaspace pre-tokenizer, </s> appended) whose pieces are the prompt words.

    Words score above characters, so a prompt word is always one piece; characters are the fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    prompts = [prompt_for(scene, fmt) for fmt in FORMATS for scene in example_labels()]
    words = sorted({word for prompt in prompts for word in prompt.replace(",", " , ").split()})
    chars = "abcdefghijklmnopqrstuvwxyz0123456789,./-'"
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + [(f"▁{word}", -1.0) for word in words] + [("▁", -5.0)] + [(c, -10.0) for c in chars]
    model = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=MAX_TOKENS,
    )  # fmt: skip
