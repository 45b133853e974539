"""The collectives the runners use, each counting the bytes this rank sends (for the benchmarks' formulas).

Bytes are counted as a ring implementation moves them: an all-gather or all-to-all of a local tensor of
n bytes over g ranks sends n·(g-1) (all-gather) or n·(g-1)/g (all-to-all) bytes from each rank; a
send sends its tensor; a broadcast is counted at its source as n·(g-1) (one copy to every other member).
Every call names its group (a `groups.Group`); a group of one communicates nothing and costs nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class Comm:
    """Collectives over `groups.Group`s, with a running count of the bytes this rank sent."""

    def __init__(self) -> None:
        self.bytes_sent = 0

    def all_gather(self, tensor: torch.Tensor, group, dim: int) -> torch.Tensor:
        """Concatenate every member's `tensor` along `dim`, in group-rank order."""
        if group.size == 1:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(group.size)]
        dist.all_gather(parts, tensor, group=group.handle)
        self.bytes_sent += _bytes(tensor) * (group.size - 1)
        return torch.cat(parts, dim=dim)

    def all_gather_async(self, tensor: torch.Tensor, group):
        """Start an all-gather; returns (parts, work): wait on `work` before reading `parts`."""
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(group.size)]
        work = dist.all_gather(parts, tensor, group=group.handle, async_op=True)
        self.bytes_sent += _bytes(tensor) * (group.size - 1)
        return parts, work

    def all_to_all(self, tensor: torch.Tensor, group) -> torch.Tensor:
        """Dim 0 of `tensor` (size = group size) is scattered: slice j goes to member j; the result's
        slice j came from member j."""
        if group.size == 1:
            return tensor
        tensor = tensor.contiguous()
        out = torch.empty_like(tensor)
        dist.all_to_all_single(out, tensor, group=group.handle)
        self.bytes_sent += _bytes(tensor) * (group.size - 1) // group.size
        return out

    def shift(self, tensor: torch.Tensor, group):
        """Start sending `tensor` to the next member of the ring and receiving the previous member's;
        returns (received, works): wait on every work before reading `received`."""
        tensor = tensor.contiguous()
        out = torch.empty_like(tensor)
        nxt = group.ranks[(group.rank + 1) % group.size]
        prev = group.ranks[(group.rank - 1) % group.size]
        ops = [dist.P2POp(dist.isend, tensor, nxt, group.handle), dist.P2POp(dist.irecv, out, prev, group.handle)]
        works = dist.batch_isend_irecv(ops)
        self.bytes_sent += _bytes(tensor)
        return out, works

    def send(self, tensor: torch.Tensor, group, to: int):
        """Start sending `tensor` to member `to` of `group`; returns the work (keep `tensor` until it is done)."""
        tensor = tensor.contiguous()
        self.bytes_sent += _bytes(tensor)
        return dist.isend(tensor, group.ranks[to], group=group.handle)

    def recv(self, like: torch.Tensor, group, source: int) -> torch.Tensor:
        """Receive a tensor shaped like `like` from member `source` of `group` (blocking)."""
        out = torch.empty_like(like, memory_format=torch.contiguous_format)
        dist.recv(out, group.ranks[source], group=group.handle)
        return out

    def broadcast(self, tensor: torch.Tensor, group, source: int) -> torch.Tensor:
        """Member `source`'s `tensor` on every member (the others pass a tensor of the same shape to fill)."""
        if group.size == 1:
            return tensor
        tensor = tensor.contiguous()
        dist.broadcast(tensor, group.ranks[source], group=group.handle)
        if group.rank == source:
            self.bytes_sent += _bytes(tensor) * (group.size - 1)
        return tensor
