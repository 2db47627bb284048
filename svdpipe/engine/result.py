"""What a finished request gives back."""

from __future__ import annotations

from dataclasses import dataclass

from svdpipe.config import ResolvedParams
from svdpipe.parareal import PararealStats
from svdpipe.planner import Plan
from svdpipe.timing import HopTiming
from svdpipe.worker import EncodedVideo


@dataclass(frozen=True)
class EngineResult:
    """A finished request: the encoded video and where its time went."""

    request_id: str
    video: EncodedVideo
    params: ResolvedParams
    timings: list[HopTiming]
    latency_s: float
    attempts: int
    plan: Plan | None  # the plan of the (last) request run; None for a long video whose clips were all kept
    split: bool = False  # each step's guidance halves ran on two actors (latency_mode cfg-split / auto)
    split_reason: str = ""  # why it was or was not split
    parareal: PararealStats | None = None  # iterations, UNet evaluations, final change (latency_mode parareal)
