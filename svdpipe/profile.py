"""Cost profiles: what encode, one denoising step and decode cost, and the step weights that balance them.

A profile is measured once at start (`measure_profile`, in-process on the same model and shapes the stages
use) or read from a JSON file saved earlier. `step_weights` turns it into EngineConfig.step_weights, so
partition_steps balances the stages by cost rather than by step count: with `colocate_codec` the first
denoise stage also encodes and the last also decodes, so their ranges should hold fewer steps.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdpipe.partition import partition_steps, stage_costs

if TYPE_CHECKING:
    from svdpipe.config import OutputFormat, ResolvedParams
    from svdpipe.models import SVDModel


@dataclass(frozen=True)
class CostProfile:
    """Measured costs in seconds: encode (image -> state), each denoising step, decode (state -> file)."""

    encode_s: float
    step_s: tuple[float, ...]  # one per step, in order
    decode_s: float
    conditions: dict[str, Any] = field(default_factory=dict)  # model, size, frames, dtype, threads, ...

    def __post_init__(self) -> None:
        if not self.step_s:
            raise ValueError("a cost profile needs at least one step cost")
        if self.encode_s < 0 or self.decode_s < 0 or any(not s > 0 for s in self.step_s):
            raise ValueError("profile costs must be positive (steps) or non-negative (encode, decode)")

    @property
    def typical_step_s(self) -> float:
        """The median step cost: every SVD step runs the same UNet on the same shapes, so spread is noise."""
        return statistics.median(self.step_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "encode_ms": self.encode_s * 1000,
            "step_ms": [s * 1000 for s in self.step_s],
            "decode_ms": self.decode_s * 1000,
            "conditions": self.conditions,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CostProfile:
        try:
            return cls(
                encode_s=float(data["encode_ms"]) / 1000,
                step_s=tuple(float(s) / 1000 for s in data["step_ms"]),
                decode_s=float(data["decode_ms"]) / 1000,
                conditions=dict(data.get("conditions", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a cost profile (needs encode_ms, step_ms, decode_ms): {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostProfile:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read cost profile {path}: {exc}") from exc
        return cls.from_json(data)


def step_weights(profile: CostProfile, num_steps: int, colocate_codec: bool) -> tuple[float, ...]:
    """Per-step weights (seconds) for EngineConfig.step_weights.

    Every step weighs the profile's median step cost (the steps are identical work; measured differences are
    noise that could move a cut). With `colocate_codec` the encode cost is added to step 0 and the decode
    cost to the last step, because the stage owning step 0 also encodes and the one owning the last step also
    decodes: partition_steps then gives those stages fewer steps. Without colocation the encoder and decoder
    are stages of their own and the weights are equal (the same split as by count).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    weights = [profile.typical_step_s] * num_steps
    if colocate_codec:
        weights[0] += profile.encode_s
        weights[-1] += profile.decode_s
    return tuple(weights)


def stage_loads(
    profile: CostProfile, num_steps: int, num_stages: int, colocate_codec: bool, weights: Sequence[float] | None
) -> list[float]:
    """Seconds of work per request on each actor of the chain, for the split the engine makes with `weights`.

    Without colocation the chain is encoder, N denoise stages, decoder; with it, just the N stages.
    """
    ranges = partition_steps(num_steps, num_stages, weights)
    true_costs = step_weights(profile, num_steps, colocate_codec)  # what each step really costs its stage
    loads = stage_costs(ranges, true_costs)
    return loads if colocate_codec else [profile.encode_s, *loads, profile.decode_s]


def measure_profile(
    model: SVDModel,
    image_png: bytes,
    params: ResolvedParams,
    output_format: OutputFormat = "npy",
    repeats: int = 3,
) -> CostProfile:
    """Time each phase in this process as a stage runs it (median of `repeats` after one warm-up).

    Encode includes decoding the PNG, decode includes writing the output file, as in the stage actors. A model
    with stand-ins (svdpipe.simulate) profiles the simulated costs. On a GPU the clock is read only after the
    device has finished the phase's kernels (they run asynchronously).
    """
    from svdpipe import stages
    from svdpipe.images import load_image
    from svdpipe.video import encode_video

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    encode_t: list[float] = []
    decode_t: list[float] = []
    step_t: list[list[float]] = [[] for _ in range(params.num_inference_steps)]
    clock = device_clock(model.device)
    for rep in range(repeats + 1):  # the first round warms up (allocator, lazy inits) and is dropped
        t0 = clock()
        state = stages.encode(model, load_image(image_png), params, "profile", output_format)
        t1 = clock()
        for i in range(params.num_inference_steps):
            s0 = clock()
            state = stages.denoise(model, state, range(i, i + 1))
            if rep:
                step_t[i].append(clock() - s0)
        t2 = clock()
        frames = stages.decode(model, state)
        encode_video(frames, output_format, params.fps)
        t3 = clock()
        if rep:
            encode_t.append(t1 - t0)
            decode_t.append(t3 - t2)
    conditions = {
        "height": params.height,
        "width": params.width,
        "num_frames": params.num_frames,
        "num_inference_steps": params.num_inference_steps,
        "cfg": params.do_classifier_free_guidance,
        "output_format": output_format,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "repeats": repeats,
    }
    return CostProfile(
        encode_s=statistics.median(encode_t),
        step_s=tuple(statistics.median(t) for t in step_t),
        decode_s=statistics.median(decode_t),
        conditions=conditions,
    )


def device_clock(device: Any) -> Callable[[], float]:
    """time.perf_counter, after waiting for the device's queued kernels when `device` is a GPU."""
    import torch

    if torch.device(device).type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock
