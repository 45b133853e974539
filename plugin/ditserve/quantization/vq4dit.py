"""VQ4DiT: vector-quantized weights — per-layer codebooks of weight sub-vectors, each sub-vector's codeword
chosen on calibration data, code widths allocated per layer under a bit budget.

After "VQ4DiT: Efficient Post-Training Vector Quantization for Diffusion Transformers" (Deng et al., 2024),
which finds that a plain k-means assignment (each sub-vector to its nearest codeword) loses much of a DiT's
fidelity at 2–3 bits, and keeps for each sub-vector a few candidate codewords whose softmax weights (and the
codebook) are fitted on calibration data before the most weighted candidate is kept. Here, per linear layer
of the blocks, from one calibration run (H = E[x xᵀ] of each layer's inputs over real sampling trajectories):
1. every `group` consecutive inputs of a row share an fp16 scale (their RMS); the scaled row is cut into
   sub-vectors of `dim` inputs, and a codebook of 2^b entries is fitted by k-means, each input weighted by
   its importance diag(H);
2. codes are chosen GPTQ's way (GPTVQ, van Baalen et al., 2024): sub-vectors left to right, each one's error
   spread over the inputs after it along the inverse Hessian (the stand-in, each sub-vector's nearest
   codeword, is `assignment: nearest`);
3. optionally (`refine_steps`), VQ4DiT's calibration: each sub-vector mixes its code and `candidates` − 1
   nearest codewords by softmax weights, Adam fits them and the codebook to the layer's output error
   tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with a penalty that forces one-hot mixes by the end, the most weighted candidate
   is kept and the codebook refitted, and the result replaces step 2's only if its error is lower. The paper
   fits a block's output; on digits-dit this layer-wise form measured no gain over step 2 (uniform 5-bit
   codes, one scale per row, 20 steps: 22.3 dB with 150 steps, 22.3 without, at 5× the load time), so the
   default skips it;
4. the code width b (2 to 8 bits) of each layer comes from a `bits` budget: each layer alone is coded at 5
   bits and the transformer's output error on recorded calls measured (sensitivities span four orders of
   magnitude on digits-dit: the feed-forward and adaLN layers of the first blocks lead), then widths grow
   where the predicted error falls most per stored bit.
Codes are packed b bits each (ditserve_kernels.vq_gemm); the stored bits per weight count the codes, the
codebooks and the scales by their bytes. The layer runs `vq_gemm`: on a GPU the Triton kernel (codebook
gathered in its tile loop) or cuBLAS on the decoded weight, whichever is faster on the model's shapes; on a
CPU the torch reference. A layer whose input width `group` or `dim` does not divide is refused at load.
Measured at the default 3 bits: 25.8 / 32.8 dB on digits-dit / digits-flow (4 images, 20 steps; nearest codewords
22.9 / 24.8), 25.0 dB on digits-dit over 100 images at 50 steps — under the issue's 28 dB goal.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ditserve.calibrate import record
from ditserve.errors import PlanError
from ditserve.quantization.base import CalibratedQuantConfig, Quantizer, Scope
from ditserve.quantization.calibration import (
    InputSecondMoment,
    Together,
    TransformerInputs,
    probe_outputs,
    spread,
    thinned,
)
from ditserve.quantization.layers import replace_module, scoped_linears, store_fp32_parameters_in_fp16
from ditserve.registry import QUANTIZERS

log = logging.getLogger(__name__)


class VQ4DiTConfig(CalibratedQuantConfig):
    name: Literal["vq4dit"] = "vq4dit"
    dim: Literal[1, 2, 4, 8] = 2
    """Inputs per sub-vector (one code each)."""
    bits: float = Field(3.0, ge=1.0, le=8.0)
    """Budget: stored bits per weight over the quantized layers (codes, codebooks and scales, by their bytes);
    each layer's code width (2 to 8 bits) is chosen from its measured sensitivity to fit it."""
    codebook_bits: int | None = Field(None, ge=2, le=8)
    """One code width for every layer (a codebook of 2^codebook_bits entries each), instead of the budget's choice."""
    candidates: int = Field(4, ge=1, le=16)
    """Codewords each sub-vector chooses among during calibration (1: nearest codeword, no refinement)."""
    refine_steps: int = Field(0, ge=0, le=10000)
    """Adam steps fitting the candidates' softmax weights and the codebook per layer (step 3; 0: none)."""
    learning_rate: float = Field(0.01, gt=0.0, le=1.0)
    """Adam's step size for the mixing logits (the codebook's is a tenth of it)."""
    group: int = Field(64, ge=8, le=4096)
    """Inputs per fp16 scale (a multiple of `dim`; a layer narrower than it gets one scale per row)."""
    assignment: Literal["gptq", "nearest"] = "gptq"
    """`gptq`: sub-vectors coded left to right, each one's error spread over the inputs after it along the
    calibrated inverse Hessian; `nearest`: each sub-vector's nearest codeword (k-means alone)."""
    kmeans_iterations: int = Field(25, ge=1, le=500)
    """Lloyd iterations of the codebook's k-means initialization."""
    probe_inputs: int = Field(4, ge=1, le=64)
    """Recorded transformer calls (spread over the sampling steps) that each layer's sensitivity is measured on."""
    probe_rows: int = Field(4, ge=1, le=256)
    """Images of each probed call's batch kept (evenly spaced, so both halves of a guidance batch)."""
    calibration_samples: int = Field(16, ge=1, le=256)
    """Images sampled to record each layer's input second moment H and the probe calls."""
    scope: Scope = "blocks"
    """The blocks' linears, or every linear of the transformer (the other fp32 parameters then stored in fp16)."""


def kmeans(vectors: torch.Tensor, weights: torch.Tensor, entries: int, iterations: int) -> torch.Tensor:
    """A codebook (entries, dim) for `vectors` (n, dim) under the distance Σ_i weights_i (v_i − c_i)², weights (n, dim):
    seeded with evenly spaced vectors of the sorted-by-norm set (deterministic), then Lloyd iterations."""
    order = vectors.norm(dim=1).argsort()
    codebook = vectors[order[torch.linspace(0, len(order) - 1, entries).long()]].clone()
    for _ in range(iterations):
        assignment = weighted_distances(vectors, weights, codebook).argmin(dim=1)
        total = torch.zeros_like(codebook).index_add_(0, assignment, weights * vectors)
        mass = torch.zeros_like(codebook).index_add_(0, assignment, weights)
        codebook = torch.where(mass > 0, total / mass.clamp(min=1e-30), codebook)  # an empty cell keeps its entry
    return codebook


def weighted_distances(vectors: torch.Tensor, weights: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(n, entries): Σ_i weights_i (v_i − c_i)² of every vector to every codeword, expanded into
    Σ w v² − 2 (w v)·c + w·c² so that the (n, entries, dim) difference tensor is never built: two matrix
    products instead, which is what makes k-means over every layer's sub-vectors cheap at load."""
    return (
        (weights * vectors**2).sum(dim=1, keepdim=True)
        - 2 * (weights * vectors) @ codebook.T
        + weights @ (codebook**2).T
    )


def output_error(weight: torch.Tensor, hessian: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), differentiable in `weight` (ΔW = weight − reference)."""
    delta = weight - reference
    return (delta @ hessian * delta).sum() / (reference @ hessian * reference).sum().clamp(min=1e-30)


def group_scales(w: torch.Tensor, group: int) -> torch.Tensor:
    """(rows, cols / group) fp16-representable RMS of each group of `group` consecutive inputs of a row."""
    rows, cols = w.shape
    return w.reshape(rows, cols // group, group).pow(2).mean(dim=-1).sqrt().clamp(min=1e-8).half().float()


def expand(scales: torch.Tensor, cols: int) -> torch.Tensor:
    """Group scales (rows, cols / group) → one per weight (rows, cols)."""
    return scales.repeat_interleave(cols // scales.shape[1], dim=1)


def gptq_codes(
    weight: torch.Tensor, codebook: torch.Tensor, hessian: torch.Tensor, dim: int, group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (rows·cols / dim,) and group scales chosen GPTQ's way (Frantar et al., 2023, as GPTVQ does for
    vectors): sub-vectors left to right, each to the codeword nearest under GPTQ's column weights 1/U_ii² (U: the
    upper Cholesky factor of H⁻¹), its error spread over the inputs to its right along U, so later choices cancel
    it; a group's scale is taken from the weights as updated when the loop enters it."""
    w = weight.clone()
    rows, cols = w.shape
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian.double())), upper=True)
    inverse = inverse.float()
    codes = torch.empty(rows, cols // dim, dtype=torch.long)
    scales = torch.empty(rows, cols // group)
    for j in range(0, cols, dim):
        if j % group == 0:
            scales[:, j // group] = group_scales(w[:, j : j + group], group)[:, 0]
        scale = scales[:, j // group, None]
        weights = (1 / torch.diag(inverse)[j : j + dim] ** 2).expand(rows, dim)
        codes[:, j // dim] = weighted_distances(w[:, j : j + dim] / scale, weights, codebook).argmin(dim=1)
        chosen = codebook[codes[:, j // dim]] * scale
        for i in range(j, j + dim):
            error = (w[:, i] - chosen[:, i - j]) / inverse[i, i]
            w[:, i + 1 :] -= error[:, None] * inverse[i, i + 1 :][None, :]
    return codes.reshape(-1), scales


def fit_codes(
    weight: torch.Tensor, hessian: torch.Tensor, config: VQ4DiTConfig, bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's codes (rows, cols / dim), codebook (2^bits, dim) and group scales (rows, cols / group),
    steps 1–4 above."""
    cfg, w = config, weight.detach().float()
    rows, cols = w.shape
    group = min(cfg.group, cols)
    h = hessian.float()
    h = h + 0.01 * torch.diag(h).mean().clamp(min=1e-12) * torch.eye(cols)  # GPTQ's damping: dead inputs still count
    scales = group_scales(w, group)
    vectors = (w / expand(scales, cols)).reshape(-1, cfg.dim)
    importance = (expand(scales, cols) ** 2 * torch.diag(h)[None, :]).reshape(-1, cfg.dim)  # ΔW's weight in the error
    codebook = kmeans(vectors, importance, 2**bits, cfg.kmeans_iterations)
    if cfg.assignment == "nearest":
        codes = weighted_distances(vectors, importance, codebook).argmin(dim=1)
    else:
        codes, scales = gptq_codes(w, codebook, h, cfg.dim, group)

    def error_of(book, codes) -> float:
        return float(output_error(book[codes].reshape(rows, cols) * expand(scales, cols), h, w))

    if cfg.refine_steps and cfg.candidates > 1:
        book, refined = refine(w, h, expand(scales, cols), codebook, codes, vectors, importance, cfg)
        if error_of(book, refined) < error_of(codebook, codes):
            codebook, codes = book, refined
    return codes.reshape(rows, cols // cfg.dim), codebook, scales


def refine(w, h, scale, codebook, codes, vectors, importance, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """VQ4DiT's calibration: each sub-vector mixes its current codeword and its `candidates` − 1 nearest others
    by softmax weights; Adam fits the logits and the codebook to the output error, a penalty on mixing growing
    to force one-hot mixes; then the most weighted candidate is the code and the codebook is refitted to it.
    `scale` (rows, cols) is each weight's group scale."""
    rows, cols = w.shape
    nearest = weighted_distances(vectors, importance, codebook).topk(cfg.candidates, dim=1, largest=False).indices
    others = torch.where(nearest == codes[:, None], nearest[:, -1:], nearest)[:, : cfg.candidates - 1]
    candidates = torch.cat([codes[:, None], others], dim=1)
    logits = torch.zeros(candidates.shape)
    logits[:, 0] = 2.0  # the current code first
    logits.requires_grad_(True)
    book = codebook.clone().requires_grad_(True)
    optimizer = torch.optim.Adam(
        [{"params": [logits], "lr": cfg.learning_rate}, {"params": [book], "lr": cfg.learning_rate / 10}]
    )
    with torch.enable_grad():
        for step in range(cfg.refine_steps):
            mix = logits.softmax(dim=1)
            weight = (mix[..., None] * book[candidates]).sum(dim=1).reshape(rows, cols) * scale
            penalty = (1 - (mix**2).sum(dim=1)).mean()  # 0 when every mix is one-hot
            loss = output_error(weight, h, w) + (step / cfg.refine_steps) ** 2 * penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    codes = candidates.gather(1, logits.detach().argmax(dim=1, keepdim=True))[:, 0]
    return refit_codebook(book.detach(), codes, w, h, scale, cfg), codes


def refit_codebook(
    codebook: torch.Tensor, codes: torch.Tensor, w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, cfg
) -> torch.Tensor:
    """The codebook refitted by Adam to the output error with the codes fixed (the hard choice moved the optimum)."""
    rows, cols = w.shape
    book = codebook.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([book], lr=cfg.learning_rate / 10)
    with torch.enable_grad():
        for _ in range(max(1, cfg.refine_steps // 3)):
            loss = output_error(book[codes].reshape(rows, cols) * scale, h, w)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return book.detach()


class VQLinear(nn.Module):
    """A linear layer whose weight is packed codebook indices of `dim`-input sub-vectors, with fp16 group scales."""

    def __init__(self, linear: nn.Linear, codes: torch.Tensor, codebook: torch.Tensor, scales: torch.Tensor, bits):
        super().__init__()
        from ditserve_kernels.vq_gemm import pack_bits

        self.bits, self.dequantized = bits, False
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("codes", pack_bits(codes, bits))
        self.register_buffer("codebook", codebook.half())
        self.register_buffer("scale", scales.half())
        self.register_buffer("bias", linear.bias.detach().half() if linear.bias is not None else None)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight as fp32: each sub-vector's codeword, times its group's scale."""
        from ditserve_kernels.vq_gemm import dequantize

        return dequantize(self.codes, self.codebook, self.scale, self.bits, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.dequantized:  # cuBLAS on the decoded weight, where it beats the kernel (chosen at load)
            return F.linear(x, self.dequantized_weight().to(x.dtype), bias)
        from ditserve_kernels.vq_gemm import vq_gemm

        flat = x.reshape(-1, self.in_features)
        y = vq_gemm(flat, self.codes, self.codebook, self.scale, bias, self.bits, x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def stored_bits_per_weight(layers: list[VQLinear]) -> float:
    """Bits of the codes, codebooks and row scales the layers store, per weight they stand for (biases apart)."""
    stored = sum(8 * (t.numel() * t.element_size()) for m in layers for t in (m.codes, m.codebook, m.scale))
    return stored / sum(m.in_features * m.out_features for m in layers)


WIDTHS = range(2, 9)
"""Code widths (bits) a layer may get."""
PROBE_BITS = 5
"""The code width each layer's sensitivity is measured at."""


def layer_bits(rows: int, cols: int, dim: int, group: int, bits: int) -> int:
    """Stored bits of a (rows, cols) layer at this code width: packed codes, fp16 codebook and group scales."""
    from ditserve_kernels.vq_gemm import packed_bytes

    return 8 * rows * packed_bytes(cols // dim, bits) + 16 * (2**bits * dim + rows * (cols // min(group, cols)))


def allocate(shapes: dict[str, tuple[int, int]], sensitivity: dict[str, float], dim: int, group: int, budget: float):
    """Code width per layer: all at the narrowest, then the widening with the most predicted error removed per
    stored bit, while the stored bits per weight stay within `budget`. A layer's error at width b is predicted
    from the one measured at PROBE_BITS by the high-rate rule: each code bit spread over `dim` weights divides
    the squared error by 4^(1/dim)."""
    widths = dict.fromkeys(shapes, WIDTHS[0])
    weights = sum(rows * cols for rows, cols in shapes.values())
    spent = sum(layer_bits(*shapes[n], dim, group, widths[n]) for n in shapes)

    def predicted(name: str, bits: int) -> float:
        return sensitivity[name] * 4 ** (-(bits - PROBE_BITS) / dim)

    while True:
        options = []
        for name, bits in widths.items():
            if bits < WIDTHS[-1]:
                cost = layer_bits(*shapes[name], dim, group, bits + 1) - layer_bits(*shapes[name], dim, group, bits)
                if spent + cost <= budget * weights:
                    options.append(((predicted(name, bits) - predicted(name, bits + 1)) / cost, name, cost))
        if not options:
            return widths
        _, name, cost = max(options)
        widths[name] += 1
        spent += cost


@QUANTIZERS.register("vq4dit")
class VQ4DiT(Quantizer):
    """VQ4DiT vector-quantized weights: per-layer codebooks, candidate assignments refined on calibration data."""

    Config = VQ4DiTConfig
    needs_calibration = True

    def calibrate(self, engine) -> dict[str, torch.Tensor]:
        """Per layer: its input second moment H, and the relative squared error of the transformer's output on the
        probe calls with that layer alone coded at PROBE_BITS (GPTQ order, no refinement)."""
        cfg = self.config
        calls, moments = TransformerInputs(), InputSecondMoment(cfg.scope)
        record(engine, Together(calls, moments), cfg.calibration_samples, cfg.calibration_steps)
        hessians, model = moments.moments(), engine.model
        probes = [thinned(call, cfg.probe_rows) for call in spread(calls.calls, cfg.probe_inputs)]
        reference = probe_outputs(model, probes)
        quick = cfg.model_copy(update={"refine_steps": 0})
        statistics = {}
        for name, linear in scoped_linears(model, cfg.scope).items():
            if linear.in_features % min(cfg.group, linear.in_features) or linear.in_features % cfg.dim:
                continue  # refused in `apply`
            coded = VQLinear(linear, *fit_codes(linear.weight, hessians[name], quick, PROBE_BITS), PROBE_BITS)
            replace_module(model.transformer, name, coded)
            outputs = probe_outputs(model, probes)
            replace_module(model.transformer, name, linear)
            error = sum(float((o - r).pow(2).sum() / r.pow(2).sum()) for o, r in zip(outputs, reference, strict=True))
            statistics |= {f"{name}.hessian": hessians[name], f"{name}.sensitivity": torch.tensor([error])}
        return statistics

    def apply(self, model) -> None:
        cfg = self.config
        linears = scoped_linears(model, cfg.scope)
        for name, linear in linears.items():  # before calibrating: a refusal should not cost a calibration run
            if linear.in_features % min(cfg.group, linear.in_features) or linear.in_features % cfg.dim:
                raise PlanError(
                    f"quant vq4dit: layer {name} has {linear.in_features} inputs, not a multiple of group "
                    f"{cfg.group} and dim {cfg.dim}; set both to powers of two that divide every quantized "
                    "layer's input width"
                )
        statistics = self.statistics(model)
        if cfg.codebook_bits is not None:
            widths = dict.fromkeys(linears, cfg.codebook_bits)
        else:
            shapes = {name: tuple(linear.weight.shape) for name, linear in linears.items()}
            sensitivity = {name: float(statistics[f"{name}.sensitivity"]) for name in linears}
            widths = allocate(shapes, sensitivity, cfg.dim, cfg.group, cfg.bits)
        layers = []
        for name, linear in linears.items():
            codes, codebook, scale = fit_codes(linear.weight, statistics[f"{name}.hessian"], cfg, widths[name])
            layers.append(VQLinear(linear, codes, codebook, scale, widths[name]))
            replace_module(model.transformer, name, layers[-1])
        if cfg.scope == "transformer":
            store_fp32_parameters_in_fp16(model.transformer)
        path = self._choose_path(model, layers)
        counts = Counter(widths.values())
        mix = ", ".join(f"{bits}-bit codes in {n} layers" for bits, n in sorted(counts.items()))
        self.runs = f"{stored_bits_per_weight(layers):.2f} bits per weight stored ({mix}); {path}"
        log.info("vq4dit: %s", self.runs)

    def _choose_path(self, model, layers: list[VQLinear]) -> str:
        """On a GPU, the faster of the kernel and cuBLAS on the decoded weight, timed on the widest layer;
        elsewhere the kernel op (whose torch reference runs on a CPU)."""
        from ditserve.quantization import paths

        if model.device.type != "cuda" or not layers:
            return "vq_gemm (torch reference on this device)"
        layer = max(layers, key=lambda m: m.in_features * m.out_features)
        x = torch.randn(paths.default_tokens(model), layer.in_features, device=model.device, dtype=model.dtype)

        def run(dequantized: bool):
            layer.dequantized = dequantized
            return layer(x)

        path, times = paths.fastest(self.name, {"kernel": lambda: run(False), "dequantized": lambda: run(True)})
        for m in layers:
            m.dequantized = path == "dequantized"
        return paths.describe(path, times, "dequantized")
