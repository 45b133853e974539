"""Low-bit floating-point element formats (fp4, fp6), their block-scale conventions, and their packed storage.

An element format ExMy has a sign bit, x exponent bits (bias 2^(x−1) − 1) and y mantissa bits, with
subnormals and, as in the OCP Microscaling (MX) formats, no infinities or NaNs: every code is a finite
value. fp4 is E2M1 (±{0, 0.5, 1, 1.5, 2, 3, 4, 6}); fp6 is E3M2 (range ±28) or E2M3 (range ±7.5, finer
steps). E1M2 is the 4-bit format with uniform steps (int4's grid, sign-magnitude): offering it lets a
per-layer format search fall back to a uniform grid where a layer's weights are not heavy-tailed.

Values are stored scaled per block of consecutive inputs, by one of two conventions:
- `mx` (OCP MX v1.0): blocks of 32, a shared power-of-two scale stored as E8M0 (one byte: the biased
  exponent), chosen as 2^(⌊log2 absmax⌋ − emax) where emax is the exponent of the format's largest normal;
  `shift` 1 takes the next power of two (no block value is clamped, at one step of resolution);
- `nv` (NVIDIA's NVFP4): blocks of 16, an fp8 E4M3 scale per block (absmax / the format's largest value,
  times a clip ratio), under one fp32 scale per tensor that keeps the block scales inside E4M3's range.
Codes are packed: two 4-bit codes per byte, four 6-bit codes per three bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

E4M3_MAX = 448.0
E8M0_BIAS = 127

Convention = Literal["mx", "nv"]
BLOCK: dict[str, int] = {"mx": 32, "nv": 16}
"""Inputs per block-scale, by convention."""
SCALE_BITS = 8
"""Bits of one block scale in both conventions (E8M0 or E4M3)."""


@dataclass(frozen=True)
class FloatFormat:
    """A sign + `exponent` + `mantissa` bit floating-point element format, all codes finite."""

    exponent: int
    mantissa: int

    @property
    def name(self) -> str:
        return f"e{self.exponent}m{self.mantissa}"

    @property
    def bits(self) -> int:
        return 1 + self.exponent + self.mantissa

    @functools.cached_property
    def magnitudes(self) -> torch.Tensor:
        """Every non-negative value, indexed by the code's magnitude bits (increasing)."""
        bias = 2 ** (self.exponent - 1) - 1
        steps = 2**self.mantissa
        values = []
        for code in range(2 ** (self.exponent + self.mantissa)):
            field, fraction = code // steps, (code % steps) / steps
            values.append(2.0 ** (1 - bias) * fraction if field == 0 else 2.0 ** (field - bias) * (1 + fraction))
        return torch.tensor(values, dtype=torch.float32)

    @property
    def max(self) -> float:
        return float(self.magnitudes[-1])

    @property
    def emax(self) -> int:
        """Exponent of the largest normal value (MX's emax_elem)."""
        return 2**self.exponent - 1 - (2 ** (self.exponent - 1) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (uint8: sign bit above the magnitude bits) of the nearest values to `x` (already scaled)."""
        grid = self.magnitudes.to(x.device)
        midpoints = (grid[1:] + grid[:-1]) / 2
        index = torch.bucketize(x.abs().float(), midpoints)
        sign = (x < 0).to(torch.uint8) << (self.bits - 1)
        return index.to(torch.uint8) | sign

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """fp32 values of `codes`."""
        magnitude_bits = self.bits - 1
        grid = self.magnitudes.to(codes.device)
        values = grid[(codes & (2**magnitude_bits - 1)).long()]
        return torch.where((codes >> magnitude_bits) & 1 == 1, -values, values)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (scaled) rounded to the nearest value of the format (clamped to its range)."""
        return self.decode(self.encode(x))


FORMATS: dict[str, FloatFormat] = {
    f.name: f for f in (FloatFormat(2, 1), FloatFormat(1, 2), FloatFormat(3, 2), FloatFormat(2, 3))
}
"""The element formats by name: fp4 e2m1 and e1m2 (uniform), fp6 e3m2 and e2m3."""


# -- block scales ----------------------------------------------------------------------------------


def block_absmax(weight: torch.Tensor, block: int) -> torch.Tensor:
    """(rows, cols) → (rows, cols / block) largest |value| per block."""
    rows, cols = weight.shape
    return weight.reshape(rows, cols // block, block).abs().amax(dim=-1).float()


def mx_scale_exponents(absmax: torch.Tensor, fmt: FloatFormat, shift: int = 0) -> torch.Tensor:
    """MX shared exponents (int, unbiased) of blocks with these absmax values: ⌊log2 absmax⌋ − emax + shift."""
    exponent = torch.floor(torch.log2(absmax.clamp(min=2.0**-126))) - fmt.emax + shift
    return exponent.clamp(-E8M0_BIAS, E8M0_BIAS).to(torch.int16)


def nv_tensor_scale(weight: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """NVFP4's per-tensor fp32 scale: the largest block scale lands on E4M3's largest value."""
    return (weight.abs().amax().float() / (fmt.max * E4M3_MAX)).clamp(min=1e-12).reshape(1)


def nv_block_scales(absmax: torch.Tensor, fmt: FloatFormat, tensor_scale: torch.Tensor, clip: float = 1.0):
    """E4M3 block scales (in units of `tensor_scale`) for blocks with these absmax values, times `clip`."""
    ratio = (absmax * clip / (fmt.max * tensor_scale)).clamp(min=2.0**-9, max=E4M3_MAX)
    return ratio.to(torch.float8_e4m3fn)


# -- packed storage --------------------------------------------------------------------------------


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, cols) codes of `bits` (4 or 6) → packed uint8 (rows, cols·bits/8): two 4-bit codes a byte
    (low nibble first), or four 6-bit codes in three bytes (little-endian in a 24-bit word)."""
    rows, cols = codes.shape
    c = codes.to(torch.int32)
    if bits == 4:
        pairs = c.reshape(rows, cols // 2, 2)
        return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    if bits == 6:
        quads = c.reshape(rows, cols // 4, 4)
        word = quads[..., 0] | (quads[..., 1] << 6) | (quads[..., 2] << 12) | (quads[..., 3] << 18)
        return torch.stack([(word >> (8 * k)) & 0xFF for k in range(3)], dim=-1).reshape(rows, -1).to(torch.uint8)
    raise ValueError(f"packing of {bits}-bit codes is not defined; 4 or 6")


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_codes`: uint8 codes (rows, cols)."""
    rows = packed.shape[0]
    p = packed.to(torch.int32)
    if bits == 4:
        return torch.stack([p & 0xF, p >> 4], dim=-1).reshape(rows, cols).to(torch.uint8)
    triples = p.reshape(rows, cols // 4, 3)
    word = triples[..., 0] | (triples[..., 1] << 8) | (triples[..., 2] << 16)
    return torch.stack([(word >> (6 * k)) & 0x3F for k in range(4)], dim=-1).reshape(rows, cols).to(torch.uint8)
