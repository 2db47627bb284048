"""GPU memory decisions (pure): whether N model copies fit on one GPU, and the largest decode chunk that fits.

Both take byte counts measured elsewhere (models.weight_bytes, an actor's warm-up peaks, torch.cuda.mem_get_info),
so they are plain arithmetic with unit tests, and nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from svdpipe.errors import ConfigError

GIB = 1024**3
# Part of the free memory a plan may count on: the CUDA caching allocator fragments, and kernels (cuDNN, SDPA)
# take workspaces outside the measured tensors.
DEFAULT_HEADROOM = 0.9


@dataclass(frozen=True)
class FitCheck:
    """N copies of a model on one GPU: what each needs and what the GPU has."""

    weight_bytes: int  # one copy's weights
    activation_bytes: int  # one copy's peak working memory beyond its weights (0: not known yet)
    copies: int
    free_bytes: int
    headroom: float = DEFAULT_HEADROOM

    @property
    def per_copy_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    @property
    def needed_bytes(self) -> int:
        return self.copies * self.per_copy_bytes

    @property
    def usable_bytes(self) -> int:
        return int(self.free_bytes * self.headroom)

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.usable_bytes

    def message(self) -> str:
        what = "weights" if not self.activation_bytes else "weights + peak activations"
        return (
            f"{self.copies} model copies need {self.needed_bytes / GIB:.2f} GiB ({what}: "
            f"{self.weight_bytes / GIB:.2f} + {self.activation_bytes / GIB:.2f} GiB each) but the GPU has "
            f"{self.free_bytes / GIB:.2f} GiB free ({self.headroom:.0%} usable: {self.usable_bytes / GIB:.2f} GiB)"
        )


def check_fit(
    weight_bytes: int, activation_bytes: int, copies: int, free_bytes: int, headroom: float = DEFAULT_HEADROOM
) -> FitCheck:
    """The fit of `copies` model copies in `free_bytes`; raises ConfigError with the arithmetic when they do not fit."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    if weight_bytes < 0 or activation_bytes < 0 or free_bytes < 0:
        raise ValueError("byte counts must be non-negative")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    fit = FitCheck(weight_bytes, activation_bytes, copies, free_bytes, headroom)
    if not fit.fits:
        raise ConfigError(
            fit.message() + ": use fewer actors per GPU (a larger num_gpus_per_actor), fp16, or more GPUs"
        )
    return fit


def copies_per_gpu(num_gpus_per_actor: float, num_actors: int) -> int:
    """How many model actors Ray may pack onto one GPU: 1 / fraction of them (at most the actors there are)."""
    if num_gpus_per_actor <= 0:
        raise ValueError("copies_per_gpu is for GPU actors (num_gpus_per_actor > 0)")
    if num_gpus_per_actor >= 1:
        return 1
    return max(1, min(num_actors, int(1 / num_gpus_per_actor + 1e-9)))


def decode_chunk_for_memory(
    num_frames: int, frame_bytes: int, free_bytes: int, headroom: float = DEFAULT_HEADROOM
) -> int:
    """The largest VAE decode chunk (frames decoded at once) whose peak, `frame_bytes` per frame as measured at
    warm-up, fits in `headroom` of `free_bytes`; 1 when not even one frame fits (the decode may then run out of
    memory, but no smaller chunk exists), `num_frames` when the peak is not known (0: diffusers' default)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if frame_bytes < 0 or free_bytes < 0:
        raise ValueError("byte counts must be non-negative")
    if frame_bytes == 0:
        return num_frames
    return max(1, min(num_frames, int(free_bytes * headroom) // frame_bytes))


# The largest decode chunk ResolvedParams allows (VideoParams' bound).
MAX_DECODE_CHUNK = 256


def max_decode_chunk(budgets: list[tuple[int, int]]) -> int | None:
    """The largest decode chunk every decoding actor can hold, from each actor's (per-frame decode peak, free
    bytes) measured at warm-up; None when no actor measured a peak (CPU actors keep diffusers' default)."""
    measured = [(frame, free) for frame, free in budgets if frame > 0]
    if not measured:
        return None
    return min(decode_chunk_for_memory(MAX_DECODE_CHUNK, frame, free) for frame, free in measured)


def check_peaks(actors: list[tuple[str, str | None, int, int]], headroom: float = DEFAULT_HEADROOM) -> None:
    """After warm-up: the actors sharing each GPU, (name, GPU UUID or None, peak bytes, GPU total bytes), can all
    reach their measured peak (weights + the UNet's activations) at once; raises ConfigError naming them
    otherwise. Decoding is left out: its chunk size is chosen from the memory that is free
    (decode_chunk_for_memory)."""
    by_gpu: dict[str, list[tuple[str, int, int]]] = {}
    for name, uuid, peak, total in actors:
        if uuid is not None:
            by_gpu.setdefault(uuid, []).append((name, peak, total))
    for uuid, group in by_gpu.items():
        need, total = sum(p for _, p, _ in group), group[0][2]
        if need > total * headroom:
            names = ", ".join(f"{n} {p / GIB:.2f} GiB" for n, p, _ in group)
            raise ConfigError(
                f"the model actors on GPU {uuid} peak at {need / GIB:.2f} GiB together ({names}) but "
                f"{headroom:.0%} of its {total / GIB:.2f} GiB is {total * headroom / GIB:.2f} GiB: requests running "
                "on all of them at once would run out of memory; use fewer actors per GPU"
            )
