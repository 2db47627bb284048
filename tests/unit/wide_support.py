"""Helpers for the wide-step tests: an in-process group of ranks run in threads, the tiny UNet, its inputs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from svdpipe.wide.comm import ByteCount


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block: these models are tiny, and two OpenMP threads on a loaded
    2-core machine spin against each other (a tiny UNet call went from 0.1 s to 6 s)."""
    intra_op = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(intra_op)


class ThreadGroup:
    """P ranks in one process, one thread each; collectives meet at a barrier."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[Any] = [None] * size

    def exchange(self, rank: int, value: Any) -> list[Any]:
        self.slots[rank] = value
        self.barrier.wait()
        seen = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return seen

    def run(self, work: Callable[[ThreadComm], Any]) -> list[Any]:
        """work(comm) on every rank at once; each rank's result, in rank order (re-raises a rank's error)."""
        results: list[Any] = [None] * self.size
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                results[rank] = work(ThreadComm(self, rank))
            except BaseException as error:  # surfaced below, in the caller's thread
                errors.append(error)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        with one_thread():  # P ranks each fanning out to every core would spin against each other
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:  # the first rank's own error, not the broken barrier the others then saw
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        return results


@dataclass
class ThreadComm:
    """A `Communicator` for one rank of a `ThreadGroup`, counting bytes as `TorchComm` does."""

    group: ThreadGroup
    rank: int
    count: ByteCount = field(default_factory=ByteCount)

    @property
    def size(self) -> int:
        return self.group.size

    def all_to_all(self, send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int]) -> torch.Tensor:
        chunks = self.group.exchange(self.rank, list(send.split(send_sizes)))
        recv = torch.cat([chunks[q][self.rank] for q in range(self.size)])
        assert recv.numel() == sum(recv_sizes)
        self.count.all_to_all_bytes += (sum(send_sizes) - send_sizes[self.rank]) * send.element_size()
        self.count.all_to_all_calls += 1
        return recv

    def all_gather_stats(self, stats: torch.Tensor) -> list[torch.Tensor]:
        gathered = self.group.exchange(self.rank, stats.clone())
        self.count.stats_bytes += stats.numel() * stats.element_size() * (self.size - 1)
        self.count.stats_calls += 1
        return gathered


@dataclass
class LocalStats:
    """A communicator that hands back this rank's own GroupNorm statistics for every rank: the negative control
    (GroupNorm over the local shard only)."""

    inner: Any

    @property
    def rank(self) -> int:
        return self.inner.rank

    @property
    def size(self) -> int:
        return self.inner.size

    def all_to_all(self, send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int]) -> torch.Tensor:
        return self.inner.all_to_all(send, send_sizes, recv_sizes)

    def all_gather_stats(self, stats: torch.Tensor) -> list[torch.Tensor]:
        return [stats] * self.size


def tiny_unet(dtype: torch.dtype) -> torch.nn.Module:
    from svdpipe.models import build_random_pipeline

    return build_random_pipeline("tiny", ["unet"]).unet.to(dtype).eval()


def unet_inputs(
    unet: torch.nn.Module, batch: int, frames: int, height: int, width: int, dtype: torch.dtype, seed: int = 0
) -> dict[str, Any]:
    """Random UNet inputs of the given shape (seeded), as the sampler passes them."""
    config = unet.config
    gen = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, frames, config.in_channels, height, width, generator=gen, dtype=dtype),
        "timestep": torch.tensor(0.7, dtype=dtype),
        "encoder_hidden_states": torch.randn(batch, 1, config.cross_attention_dim, generator=gen, dtype=dtype),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]] * batch, dtype=dtype),
    }
