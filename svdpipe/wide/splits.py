"""How a wide step splits frames and spatial positions over P ranks: contiguous, uneven, never padded.

Padding would be wrong, not just wasteful: a padded frame joins temporal attention and a padded position joins
the GroupNorm statistics. So shards are uneven, and every collective carries explicit split sizes.
"""

from __future__ import annotations

from dataclasses import dataclass


def even_splits(n: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous shards of `n` items; the first `n % parts` shards hold one more."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    if n < parts:
        raise ValueError(f"cannot split {n} items over {parts} ranks without an empty shard")
    base, extra = divmod(n, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


def offsets(sizes: list[int]) -> list[int]:
    """Start index of each shard (the running sum of the sizes before it)."""
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return starts


def shard_range(n: int, parts: int, rank: int) -> range:
    """The global indices rank `rank` holds of `n` items split over `parts` ranks."""
    if not 0 <= rank < parts:
        raise ValueError(f"rank {rank} is outside 0..{parts - 1}")
    sizes = even_splits(n, parts)
    start = offsets(sizes)[rank]
    return range(start, start + sizes[rank])


def frame_splits(frames: int, parts: int) -> list[int]:
    """Frames per rank in the frame layout (per-frame layers run on these)."""
    return even_splits(frames, parts)


def position_splits(height: int, width: int, parts: int) -> list[int]:
    """Flattened spatial positions (row-major over height x width) per rank in the position layout."""
    return even_splits(height * width, parts)


def max_share(n: int, parts: int) -> float:
    """The busiest rank's share of `n` items, ceil(n / parts) / n: what bounds a sharded layer's time."""
    return max(even_splits(n, parts)) / n


@dataclass(frozen=True)
class FrameShard:
    """Which frames of a (batch, frames) sample one rank holds in the frame layout."""

    batch: int  # the UNet batch (2 with classifier-free guidance: uncond and cond)
    frame_sizes: tuple[int, ...]  # frames per rank, `frame_splits(frames, P)`
    rank: int

    @classmethod
    def of(cls, batch: int, frames: int, parts: int, rank: int) -> FrameShard:
        if not 0 <= rank < parts:
            raise ValueError(f"rank {rank} is outside 0..{parts - 1}")
        return cls(batch, tuple(frame_splits(frames, parts)), rank)

    @property
    def frames(self) -> int:
        return sum(self.frame_sizes)

    @property
    def parts(self) -> int:
        return len(self.frame_sizes)

    @property
    def local_frames(self) -> int:
        return self.frame_sizes[self.rank]

    @property
    def start(self) -> int:
        """Global index of this rank's first frame (frame embeddings and guidance scales are per global frame)."""
        return offsets(list(self.frame_sizes))[self.rank]

    @property
    def frame_slice(self) -> slice:
        """This rank's frames of anything indexed by global frame, e.g. the sampler's per-frame guidance scales
        (`guidance_scales(...)[:, shard.frame_slice]`) or the full latents."""
        return slice(self.start, self.start + self.local_frames)
