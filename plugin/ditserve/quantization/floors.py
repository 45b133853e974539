"""Fidelity floors: the mean PSNR each quantizer's defaults must keep against the unquantized model in CI.

tests/quantization/test_fidelity.py runs each quantizer named here with its default settings on both
embedded models (digits-dit, digits-flow) at 20 steps, on a fixed request of four images of different
classes or prompts, and fails it when the mean PSNR against the unquantized images of the same seeds
falls below its floor. The floors sit side by side in one table (as caching/floors.py does for caches)
and are set between what the quantizer keeps and what a naive scheme of the same width does: fp4 with
one scale per tensor, rounded to nearest (the stand-in of the 4-bit schemes), scores 23–25 dB there; VQ4DiT
at 3 bits with each sub-vector at its nearest codeword (its stand-in) 22.9 / 24.8 dB (digits-dit /
digits-flow), against 25.8 / 32.8 dB with its calibrated assignment.
"""

from __future__ import annotations

FIDELITY_FLOORS_DB: dict[str, float] = {
    "lbq": 30.0,
    "mixdq": 30.0,
    "tfm-ptq": 30.0,
    "vq4dit": 25.0,
}
"""Quantizer name → the floor, in dB, of its CI fidelity check."""
