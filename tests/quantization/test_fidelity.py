"""Fidelity of quantizers' defaults on the embedded models, against a floor that a naive scheme of the same width
misses (quantization/floors.py explains the floors).

Each quantizer with a floor loads with its default settings (calibrating at load where it needs to) on
digits-dit and digits-flow, and runs one fixed request of four images of different classes or prompts at 20
steps; the mean PSNR against the unquantized images of the same seeds must reach the floor. fp4 with one scale
per tensor, rounded to nearest, must fail the same check at the 4-bit schemes' floors, and VQ4DiT with each
sub-vector at its nearest codeword (no calibrated assignment) at VQ4DiT's: that is what makes it a check.
"""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from ditserve.config import load_config, parse_config
from ditserve.quality import mean_finite, psnr
from ditserve.quantization.base import QuantConfig, Quantizer
from ditserve.quantization.floors import FIDELITY_FLOORS_DB
from ditserve.quantization.layers import block_linears
from ditserve.quantization.lowbit_formats import FORMATS
from ditserve.registry import QUANTIZERS
from ditserve.request import GenerationRequest

MODELS = ("digits-dit", "digits-flow")
STEPS = 20
FOUR_BIT = ("lbq", "mixdq", "tfm-ptq")
"""The schemes of 4 to 4.5 bits per weight, whose floors naive fp4 (4 bits) must miss."""
CLASSES = (0, 3, 7, 9)
PROMPTS = ("zero", "a handwritten three", "7", "the number nine")


def engine(model: str, quant: dict):
    from ditserve.engine import Engine

    base = load_config(f"builtin:{model}")
    data = base.model_dump(mode="json")
    data["plan"]["quant"] = quant
    return Engine(parse_config(data, base.source))


def images(engine) -> torch.Tensor:
    """The check's four images (one per class or prompt, seeds 7–10), in [0, 1]."""
    if engine.adapter.conditioning == "class":
        requests = [GenerationRequest(class_label=c, seed=7 + k, steps=STEPS) for k, c in enumerate(CLASSES)]
    else:
        requests = [GenerationRequest(prompt=p, seed=7 + k, steps=STEPS) for k, p in enumerate(PROMPTS)]
    return torch.cat([r.images for r in engine.generate_batch(requests)])


@pytest.fixture(scope="module")
def references():
    torch.set_num_threads(1)
    return {model: images(engine(model, {"name": "none"})) for model in MODELS}


def fidelity_problems(references, quant: dict, floor: float) -> list[str]:
    """What fails the check for `quant` on each embedded model; empty if nothing."""
    problems = []
    for model in MODELS:
        mean = mean_finite(psnr(images(engine(model, quant)), references[model], data_range=1.0))
        if not mean >= floor:
            problems.append(f"{quant['name']} on {model}: mean PSNR {mean:.1f} dB is under the floor {floor} dB")
    return problems


@pytest.mark.parametrize("name", sorted(FIDELITY_FLOORS_DB))
def test_defaults_stay_above_the_floor(name, references):
    assert name in QUANTIZERS.names()
    assert fidelity_problems(references, {"name": name}, FIDELITY_FLOORS_DB[name]) == []


# -- the test of the test -------------------------------------------------------------------------------


class NaiveFp4Config(QuantConfig):
    name: Literal["naive-fp4-for-test"] = "naive-fp4-for-test"


class NaiveFp4(Quantizer):
    """Every block linear's weight rounded to nearest E2M1 under one scale per tensor (no blocks, no search)."""

    Config = NaiveFp4Config

    def apply(self, model) -> None:
        fmt = FORMATS["e2m1"]
        for linear in block_linears(model).values():
            scale = linear.weight.detach().abs().amax() / fmt.max
            linear.weight = nn.Parameter(fmt.round(linear.weight.detach() / scale) * scale, requires_grad=False)


@pytest.fixture
def naive_fp4():
    """`naive-fp4-for-test` registered for this test only (the registry has no public way to forget a name)."""
    QUANTIZERS.register("naive-fp4-for-test")(NaiveFp4)
    try:
        yield "naive-fp4-for-test"
    finally:
        QUANTIZERS._entries.pop("naive-fp4-for-test", None)
        QUANTIZERS._origins.pop("naive-fp4-for-test", None)


def test_naive_fp4_fails_the_check(naive_fp4, references):
    floor = min(FIDELITY_FLOORS_DB[name] for name in FOUR_BIT)  # even the loosest floor of the 4-bit-wide schemes
    problems = fidelity_problems(references, {"name": naive_fp4}, floor)
    assert len(problems) == len(MODELS), problems


def test_nearest_codeword_vq_fails_the_vq4dit_floor(references):
    """VQ4DiT's stand-in: each sub-vector at its nearest k-means codeword, at the same 3 bits."""
    stand_in = {"name": "vq4dit", "assignment": "nearest"}
    problems = fidelity_problems(references, stand_in, FIDELITY_FLOORS_DB["vq4dit"])
    assert len(problems) == len(MODELS), problems
