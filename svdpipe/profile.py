"""Cost profiles: what encode, one denoising step and decode cost (for the bench's ideal and projection).

A profile is measured in-process on the same model and shapes the actors use (`measure_profile`) or read from
a JSON file saved earlier. The engine's planner gets its costs from the actors' own warm-up measurements.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
