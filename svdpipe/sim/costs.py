"""The simulator's costs: seconds per phase on a model actor, from a measured profile or a named table of
assumptions, with an optional seeded spread.

A cost source is one of: the bench's simulated costs (`--simulate-step-ms` ...: the stand-in model's, exact),
a profile JSON (`svdpipe bench --save-profile FILE` writes it: encode_ms, step_ms per step, decode_ms of the
whole video), or a named table below. The tables are ASSUMPTIONS, not measurements: figures quoted for SVD-XT at
576x1024, 25 frames, fp16, to be replaced by a profile measured on the machine.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, replace

from svdpipe.planner import CALL_S, CostModel
from svdpipe.profile import CostProfile

HOP_S = 0.003  # per-call turnaround (dispatch, arguments, result) measured here (`svdpipe bench --project`'s hop)
MUX_S = 0.05  # muxing one video on a CPU mux actor, when nothing says otherwise (small against decode)


@dataclass(frozen=True)
class SimCosts:
    """Expected seconds of each phase; `cv` is the coefficient of variation of each call's duration."""

    encode_s: float  # CLIP + VAE encode of the input image
    step_s: float  # one denoising step with guidance (a UNet batch of two)
    decode_frame_s: float  # VAE decode of one frame
    mux_s: float = MUX_S  # writing one video on a mux actor
    hop_s: float = HOP_S  # turnaround of every call, on the actor that runs it
    cv: float = 0.0  # spread of each call's duration (lognormal, mean 1); 0: deterministic
    source: str = ""  # where the figures come from, for the report

    def __post_init__(self) -> None:
        if min(self.encode_s, self.decode_frame_s, self.mux_s, self.hop_s, self.cv) < 0 or not self.step_s > 0:
            raise ValueError(f"costs must be non-negative and the step cost positive: {self}")

    def planner_costs(self) -> CostModel:
        """What the engine's planner would hold: the same phase costs, and its own constant call turnaround."""
        return CostModel(self.encode_s, self.step_s, self.decode_frame_s, CALL_S)

    def work_s(self, steps: int, frames: int) -> float:
        """W: one request's work on one actor (the bench's `request_work_s`)."""
        return self.encode_s + steps * self.step_s + frames * self.decode_frame_s


@dataclass(frozen=True)
class Assumed:
    """A named table of assumed costs, with the request shape they were quoted for."""

    costs: SimCosts
    steps: int
    frames: int
    note: str


ASSUMPTIONS: dict[str, Assumed] = {
    "h100-trt": Assumed(
        SimCosts(encode_s=0.1, step_s=0.76, decode_frame_s=3.4 / 25, mux_s=0.3, source="assumption h100-trt"),
        steps=25,
        frames=25,
        note="ASSUMED, not measured: SVD-XT 576x1024, 25 frames, fp16, TensorRT on one H100: step 0.76 s, "
        "decode 3.4 s per 25 frames, encode ~0.1 s; mux 0.3 s on a CPU (a guess)",
    ),
    "a100-eager": Assumed(
        SimCosts(encode_s=0.2, step_s=1.54, decode_frame_s=6.0 / 25, mux_s=0.3, source="assumption a100-eager"),
        steps=25,
        frames=25,
        note="ASSUMED, not measured: SVD-XT 576x1024, 25 frames, fp16, eager PyTorch on one A100: step 1.54 s, "
        "decode ~6 s per 25 frames, encode ~0.2 s (a guess); mux 0.3 s on a CPU (a guess)",
    ),
}


def from_profile(profile: CostProfile, frames: int, source: str) -> SimCosts:
    """Costs from a measured profile. Its decode is the whole video's (at the profile's frame count, else
    `frames`); its per-step costs, when there are several, give the spread (their coefficient of variation)."""
    measured_frames = int(profile.conditions.get("num_frames", frames)) or frames
    steps = profile.step_s
    cv = statistics.stdev(steps) / statistics.mean(steps) if len(steps) >= 3 else 0.0
    return SimCosts(
        encode_s=profile.encode_s,
        step_s=profile.typical_step_s,
        decode_frame_s=profile.decode_s / measured_frames,
        cv=cv,
        source=source,
    )


def choose(
    profile: str | None,
    profile_name: str | None,
    frames: int,
    simulate_step_ms: float | None,
    simulate_encode_ms: float | None,
    simulate_decode_ms: float | None,
    cost_cv: float | None = None,
    hop_ms: float | None = None,
    mux_ms: float | None = None,
) -> SimCosts:
    """The run's costs: a profile file, a named table, or the bench's simulated costs (which then replace the
    source's figure for their phase, as they replace the model's in `svdpipe bench`); `cost_cv`, `hop_ms` and
    `mux_ms` over whatever the source says."""
    if profile is not None and profile_name is not None:
        raise ValueError("give --profile FILE or --profile-name NAME, not both")
    if profile is not None:
        costs = from_profile(CostProfile.load(profile), frames, f"profile {profile}")
    elif profile_name is not None:
        if profile_name not in ASSUMPTIONS:
            raise ValueError(f"unknown --profile-name {profile_name!r}; choose from {', '.join(ASSUMPTIONS)}")
        costs = ASSUMPTIONS[profile_name].costs
    elif simulate_step_ms is not None:
        costs = SimCosts(0.0, simulate_step_ms / 1000, 0.0, source="simulated costs")
    else:
        raise ValueError("the simulator needs costs: --profile FILE, --profile-name NAME or --simulate-step-ms MS")
    if simulate_step_ms is not None:
        costs = replace(costs, step_s=simulate_step_ms / 1000)
    if simulate_encode_ms is not None:
        costs = replace(costs, encode_s=simulate_encode_ms / 1000)
    if simulate_decode_ms is not None:
        costs = replace(costs, decode_frame_s=simulate_decode_ms / 1000 / frames)
    if cost_cv is not None:
        costs = replace(costs, cv=cost_cv)
    if hop_ms is not None:
        costs = replace(costs, hop_s=hop_ms / 1000)
    if mux_ms is not None:
        costs = replace(costs, mux_s=mux_ms / 1000)
    return costs


class Spread:
    """Seeded multiplicative noise on call durations: lognormal with mean 1 and coefficient of variation `cv`
    (1.0 every time, drawing nothing, for cv = 0)."""

    def __init__(self, cv: float, seed: int) -> None:
        self.cv = cv
        self._rng = random.Random(seed)
        sigma2 = math.log1p(cv * cv)
        self._mu, self._sigma = -sigma2 / 2, math.sqrt(sigma2)

    def factor(self) -> float:
        return self._rng.lognormvariate(self._mu, self._sigma) if self.cv > 0 else 1.0
