"""The collectives a wide step needs, behind a small protocol, and a torch.distributed implementation that
counts the bytes it sends.

A wide step needs two things from its group: an all-to-all of a flat buffer with explicit split sizes (layout
switches, uneven by design) and an all-gather of a few GroupNorm statistics. Keeping them behind a protocol lets
the forward run under a real process group (gloo on CPU, NCCL on GPUs) or under an in-process stand-in in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


class Communicator(Protocol):
    """One rank's view of the group that shares a wide step."""

    rank: int
    size: int

    def all_to_all(self, send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int]) -> torch.Tensor:
        """Exchange a flat buffer: `send_sizes[q]` elements of `send` go to rank q (in order); the result holds
        `recv_sizes[q]` elements from each rank q, in rank order."""
        ...

    def all_gather_stats(self, stats: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `stats` tensor (same shape and dtype on all ranks), in rank order."""
        ...


@dataclass
class ByteCount:
    """Bytes this rank sent to other ranks, and how many collectives it joined; its own share is not counted."""

    all_to_all_bytes: int = 0
    stats_bytes: int = 0
    all_to_all_calls: int = 0
    stats_calls: int = 0

    @property
    def total_bytes(self) -> int:
        return self.all_to_all_bytes + self.stats_bytes


@dataclass
class TorchComm:
    """A `Communicator` over a torch.distributed process group (None: the default group).

    Counts logical bytes: for an all-to-all, what leaves this rank; for an all-gather of n bytes, n to each of
    the other P - 1 ranks. The wire traffic of a ring or tree algorithm differs; this is the shape-given figure
    that `forward_bytes` predicts.
    """

    group: Any = None
    count: ByteCount = field(default_factory=ByteCount)

    def __post_init__(self) -> None:
        import torch.distributed as dist

        self.rank = dist.get_rank(self.group)
        self.size = dist.get_world_size(self.group)

    def reset(self) -> ByteCount:
        """Start a new count (e.g. per forward) and return the finished one."""
        done, self.count = self.count, ByteCount()
        return done

    def all_to_all(self, send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int]) -> torch.Tensor:
        import torch
        import torch.distributed as dist

        recv = torch.empty(sum(recv_sizes), dtype=send.dtype, device=send.device)
        dist.all_to_all_single(
            recv,
            send.contiguous(),
            output_split_sizes=recv_sizes,
            input_split_sizes=send_sizes,
            group=self.group,
        )
        self.count.all_to_all_bytes += (sum(send_sizes) - send_sizes[self.rank]) * send.element_size()
        self.count.all_to_all_calls += 1
        return recv

    def all_gather_stats(self, stats: torch.Tensor) -> list[torch.Tensor]:
        import torch
        import torch.distributed as dist

        stats = stats.contiguous()
        gathered = [torch.empty_like(stats) for _ in range(self.size)]
        dist.all_gather(gathered, stats, group=self.group)
        self.count.stats_bytes += stats.numel() * stats.element_size() * (self.size - 1)
        self.count.stats_calls += 1
        return gathered
