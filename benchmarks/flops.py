"""Counted FLOPs: what a run really computed, whatever path a cache took through the model.

torch's `FlopCounterMode` counts every matrix product and convolution that runs inside it, from the shapes
it is given, so a cache that runs a layer on 30% of its tokens is counted at 30% of it, and the extra
products a cache spends (ToCa's attention score) are counted too: a machine-independent cost that is
honest for token-level caches, where block counts are not. torch 2.13 has no formula for the CPU kernel of
fused attention (`_scaled_dot_product_flash_attention_for_cpu`), which would count attention as free;
`counting` gives it the formula of the other fused-attention kernels. Counting slows a run (every operation
passes through Python), so it is never on a timed run.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU fused-attention kernel: those of every fused-attention kernel (q·kᵀ and p·v)."""
    return sdpa_flop_count(query, key, value)


@contextlib.contextmanager
def counting():
    """A FLOP counter over the block: `.get_total_flops()` after it."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        yield counter
