"""What `svdpipe gpu-check` runs: the GPU settings, or the same parts on the CPU with the tiny model (--dry-run)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Seconds each part may take on the GPU; together under the command's 8-minute promise (GPU_TOTAL_S).
GPU_BUDGETS = {"gpu_tests": 120.0, "export": 40.0, "measure": 90.0, "compile": 80.0, "bench": 140.0}
GPU_TOTAL_S = 470.0
DRY_BUDGETS = {"gpu_tests": 60.0, "export": 30.0, "measure": 40.0, "compile": 40.0, "bench": 90.0}
DRY_TOTAL_S = 110.0


@dataclass(frozen=True)
class CheckSettings:
    """One gpu-check run; `for_gpu` and `for_dry_run` are the two that exist."""

    dry_run: bool
    model: str  # a built-in architecture, exported once to a directory every part loads from
    dtype: str
    device: str
    height: int
    width: int
    frames: tuple[int, ...]  # one measurement per frame count
    timed_steps: int  # denoising steps timed per measurement (the first is a warm-up and not counted)
    decode_chunks: tuple[int, ...]  # VAE decode chunk sizes to time (those <= frames)
    compile_backend: str  # torch.compile backend: inductor on the GPU, eager for the CPU dry run (no codegen)
    compile_mode: str | None
    bench_stages: int
    bench_gpus_per_actor: float
    bench_steps: int
    bench_frames: int
    bench_requests: int
    budgets: dict[str, float]
    total_s: float

    @classmethod
    def for_gpu(cls) -> CheckSettings:
        return cls(
            dry_run=False,
            model="random-full-xt",
            dtype="fp16",
            device="cuda",
            height=576,
            width=1024,
            frames=(14, 25),
            timed_steps=4,
            decode_chunks=(1, 2, 4, 7, 14, 25),
            compile_backend="inductor",
            compile_mode=None,
            bench_stages=7,
            bench_gpus_per_actor=0.14,  # 7 x 0.14 = 0.98: all seven on one GPU
            bench_steps=7,
            bench_frames=14,
            bench_requests=14,
            budgets=dict(GPU_BUDGETS),
            total_s=GPU_TOTAL_S,
        )

    @classmethod
    def for_dry_run(cls) -> CheckSettings:
        return cls(
            dry_run=True,
            model="tiny",
            dtype="fp32",
            device="cpu",
            height=64,
            width=64,
            frames=(2,),
            timed_steps=2,
            decode_chunks=(1, 2),
            compile_backend="eager",
            compile_mode=None,
            bench_stages=2,
            bench_gpus_per_actor=0.0,
            bench_steps=2,
            bench_frames=2,
            bench_requests=4,
            budgets=dict(DRY_BUDGETS),
            total_s=DRY_TOTAL_S,
        )

    def scaled(self, factor: float) -> CheckSettings:
        """Every budget (and the total) times `factor`."""
        budgets = {k: v * factor for k, v in self.budgets.items()}
        return dataclasses.replace(self, budgets=budgets, total_s=self.total_s * factor)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckSettings:
        data = dict(data)
        for key in ("frames", "decode_chunks"):
            data[key] = tuple(data[key])
        return cls(**data)
