"""The text side of the embedded flow model: how a digit is asked for, and the tokenizer over those words.

Each training image gets one prompt drawn from `TEMPLATES` ("a handwritten seven", "7", "the number
seven", ...), so the model learns to read words and numerals alike; the empty prompt is the
unconditional one (what SD3's pipeline encodes for classifier-free guidance). The tokenizer is a CLIP
BPE tokenizer built here from that vocabulary: every prompt word is one token, any other text falls
back to single characters, and nothing is downloaded.
"""

from __future__ import annotations

import torch

from ditserve.models.digits.data import CLASS_NAMES

TEMPLATES = (
    "{name}",
    "{digit}",
    "{article} {name}",
    "a handwritten {name}",
    "a handwritten {digit}",
    "handwritten {name}",
    "digit {name}",
    "the digit {name}",
    "the digit {digit}",
    "the number {name}",
    "number {digit}",
    "{article} {name}, written by hand",
)
"""Ways of asking for one digit; `{name}` is "seven", `{digit}` is "7", `{article}` is "a" or "an"."""
MAX_TOKENS = 10
"""The tokenizer's window: the longest prompt ("an eight, written by hand") is 6 tokens, plus start and end."""


def prompt_for(label: int, template: int) -> str:
    """The prompt `TEMPLATES[template]` for digit `label`."""
    name = CLASS_NAMES[label]
    return TEMPLATES[template].format(name=name, digit=str(label), article="an" if name[0] in "aeiou" else "a")


def all_prompts() -> list[str]:
    """Every prompt the model was trained on, digit by digit."""
    return [prompt_for(label, k) for label in range(len(CLASS_NAMES)) for k in range(len(TEMPLATES))]


def example_prompts() -> list[str]:
    """Every training prompt, digit-minor ("zero", "one", …, then the next template), so that any first k of
    them cover the digits evenly: the checkpoint's `example_prompts.json`, which `ditserve calibrate` prompts
    the model with."""
    return [prompt_for(label, k) for k in range(len(TEMPLATES)) for label in range(len(CLASS_NAMES))]


def sample_prompts(labels: torch.Tensor, drop: float, generator: torch.Generator) -> list[str]:
    """One random template per label; with probability `drop` the empty (unconditional) prompt instead."""
    templates = torch.randint(0, len(TEMPLATES), (labels.shape[0],), generator=generator)
    dropped = torch.rand(labels.shape[0], generator=generator) < drop
    return [
        "" if skip else prompt_for(int(label), int(k))
        for label, k, skip in zip(labels.tolist(), templates.tolist(), dropped.tolist(), strict=True)
    ]


def build_tokenizer():
    """A CLIP BPE tokenizer in which every word of every prompt is a single token.

    CLIP's BPE marks a word's last character with `</w>`; each word gets the chain of merges that
    joins its characters left to right, and every letter, numeral and punctuation mark is in the
    vocabulary on its own, so unknown words still tokenize (character by character).
    """
    from transformers import CLIPTokenizer

    words = sorted({word for prompt in all_prompts() for word in prompt.replace(",", " , ").split()})
    chars = "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-"
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        joined = pieces[0]
        for piece in pieces[1:]:
            if (joined, piece) not in merges:
                merges.append((joined, piece))
            joined += piece
            vocab.setdefault(joined, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS, pad_token="<|endoftext|>")
    for word in words:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + "</w>"]:
            raise AssertionError(f"the digits tokenizer splits {word!r} into {pieces}; its merges conflict")
    return tokenizer
