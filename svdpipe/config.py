"""Typed configuration: per-request video parameters (diffusers' names) and the engine config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from svdpipe.models import ModelSpec

Dtype = Literal["fp32", "fp16", "bf16"]
Transport = Literal["auto", "nccl", "cuda_ipc", "gloo", "object_store"]
PlacementStrategy = Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"]
OutputFormat = Literal["mp4", "webm", "gif", "npy"]
LatencyMode = Literal["off", "cfg-split", "auto", "parareal", "wide"]
# pipeline: each request's steps are split over every model actor; data-parallel: one actor runs it whole.
Parallelism = Literal["pipeline", "data-parallel"]


class VideoParams(BaseModel):
    """One image-to-video request's knobs, named and defaulted as in diffusers' StableVideoDiffusionPipeline.

    `None` means "the model's default" (height/width from the UNet sample size, num_frames from the UNet
    config, decode_chunk_size = num_frames), exactly as diffusers resolves them; except that on GPU actors an
    unset decode_chunk_size means 'auto': the largest chunk the decoding actors' free memory holds (recorded in
    the resolved parameters, since the chunk size changes the frames).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int | None = Field(None, ge=8, le=4096, description="Output height in pixels.")
    width: int | None = Field(None, ge=8, le=4096, description="Output width in pixels.")
    num_frames: int | None = Field(None, ge=1, le=256, description="Frames to generate.")
    num_inference_steps: int = Field(25, ge=1, le=1000, description="Denoising steps.")
    min_guidance_scale: float = Field(1.0, ge=0.0, le=100.0, description="Guidance on the first frame.")
    max_guidance_scale: float = Field(3.0, ge=0.0, le=100.0, description="Guidance on the last frame.")
    fps: int = Field(7, ge=1, le=240, description="Frames per second; SVD is conditioned on fps - 1.")
    motion_bucket_id: int = Field(127, ge=0, le=1023, description="Amount of motion (higher moves more).")
    noise_aug_strength: float = Field(0.02, ge=0.0, le=10.0, description="Noise added to the input image.")
    decode_chunk_size: int | Literal["auto"] | None = Field(
        None,
        description="Frames decoded at once by the VAE (1-256); 'auto' (the default on GPUs): the most that fit.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Same meaning as diffusers' torch.Generator('cpu').manual_seed(seed).",
    )
    num_clips: int = Field(
        1,
        ge=1,
        le=1000,
        description="Clips chained into one video: clip k+1 starts from clip k's last frame, with seed + k + 1.",
    )
    color_match: bool = Field(
        False,
        description="Match each later clip's colour statistics to clip 0 (curbs drift; not exact: off by default).",
    )

    @model_validator(mode="after")
    def _guidance_order(self) -> VideoParams:
        chunk = self.decode_chunk_size
        if isinstance(chunk, int) and not 1 <= chunk <= 256:
            raise ValueError(f"decode_chunk_size must be 'auto' or from 1 to 256, got {chunk}")
        if self.min_guidance_scale > self.max_guidance_scale:
            raise ValueError(
                f"min_guidance_scale ({self.min_guidance_scale}) must not exceed "
                f"max_guidance_scale ({self.max_guidance_scale})"
            )
        return self


class EngineConfig(BaseModel):
    """Everything that shapes a deployment; frozen, and sent whole to every actor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("tiny", description="'tiny', 'random-full', 'random-full-xt', a local directory or hub id.")
    dtype: Dtype = Field("fp32", description="Weight and activation dtype of every stage.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where stages run; 'auto' is cuda when the actor has a GPU, else cpu."
    )
    num_stages: int = Field(
        3, ge=1, le=64, description="Model actors (each holds UNet, VAE and CLIP); a pipeline splits steps over all."
    )
    parallelism: Parallelism = Field(
        "pipeline", description="Split each request's steps over the actors, or run each request on one actor."
    )
    num_mux_actors: int = Field(1, ge=1, le=64, description="CPU-only actors that write the video files.")
    transport: Transport = Field("auto", description="How latents move between stages.")
    num_gpus_per_actor: float = Field(
        0.0, ge=0.0, le=8.0, description="GPUs per actor: 1, a fraction to share a GPU, 0 for CPU actors."
    )
    num_cpus_per_actor: float = Field(0.1, gt=0.0, le=64.0, description="CPUs reserved per actor.")
    placement_strategy: PlacementStrategy = Field("STRICT_PACK", description="Placement-group strategy.")
    max_inflight: int = Field(16, ge=1, le=4096, description="Requests admitted into the pipeline at once.")
    request_timeout_s: float = Field(600.0, gt=0.0, description="Per-request limit, from admission.")
    max_video_pixels: int = Field(
        2**25,
        ge=64,
        description="Largest num_frames x height x width a request may ask for (memory; SVD-XT's default "
        "25x576x1024 is 14.7 million).",
    )
    max_retries: int = Field(
        1, ge=0, le=5, description="Restarts from the first stage after an actor or transport failure."
    )
    start_timeout_s: float = Field(
        900.0, gt=0.0, description="Longest wait for actors to start, load the model and warm up (also in a rebuild)."
    )
    max_clips: int = Field(
        40, ge=1, le=1000, description="Most clips one long-video request may chain (40: 1,000 frames of SVD-XT)."
    )
    ping_timeout_s: float = Field(
        10.0, gt=0.0, description="Longest wait for an actor's health answer (none in a rebuild: it is replaced)."
    )
    step_weights: tuple[float, ...] | None = Field(
        None, description="Relative per-step costs for balancing step ranges (None: equal)."
    )
    simulate_step_ms: float | None = Field(
        None,
        ge=0.0,
        le=600_000.0,
        description="Benchmarks: a stand-in UNet waits this long per call on a guidance batch of two (half for one).",
    )
    simulate_encode_ms: float | None = Field(
        None, ge=0.0, le=600_000.0, description="Benchmarks: stand-in CLIP + VAE encode that waits this long."
    )
    simulate_decode_frame_ms: float | None = Field(
        None, ge=0.0, le=600_000.0, description="Benchmarks: stand-in VAE decode that waits this long per frame."
    )
    latency_mode: LatencyMode = Field(
        "off",
        description="Single-request speed-up: 'cfg-split' runs each step's guidance halves on two actors, "
        "'auto' does so only while actors are idle, 'parareal' solves the stage blocks in parallel (opt-in), "
        "'wide' runs an idle request's steps on wide_size actors at once, each UNet call split over them "
        "('auto' does too, first, on actors with a GPU each: on CPU actors it is slower).",
    )
    wide_size: int = Field(
        2,
        ge=2,
        le=64,
        description="P: actors sharing one UNet call in the 'wide' latency mode (frames and positions split "
        "over them, exact); the model actors form num_stages // P groups of P.",
    )
    parareal_tol: float = Field(
        0.0, ge=0.0, le=100.0, description="Parareal stops once the final latents change by at most this (0: exact)."
    )
    parareal_max_iters: int | None = Field(
        None, ge=1, le=64, description="Parareal iteration cap (None: the number of stages, where it is exact)."
    )
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="torch intra-op threads per actor (None: torch's default)."
    )
    compile_unet: bool = Field(False, description="torch.compile the UNet (GPU path).")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode; 'reduce-overhead' captures the UNet step in CUDA graphs."
    )
    channels_last: bool = Field(False, description="Use channels_last memory format for the UNet.")
    namespace: str = Field("svdpipe", min_length=1, description="Ray namespace of the stage actors.")
    name_prefix: str = Field("svdpipe", min_length=1, description="Actor names are <prefix>-<role>-<i>.")

    @property
    def wide_steps(self) -> bool:
        """Whether requests may run wide (the actors then form a torch.distributed group): in the 'wide' mode, and
        in 'auto' where it pays and can run: one GPU per actor (NCCL), a group's worth of actors, no gloo
        transport (whose group claims the same torch.distributed state)."""
        if self.latency_mode == "wide":
            return True
        return (
            self.latency_mode == "auto"
            and self.num_gpus_per_actor >= 1
            and self.num_stages >= self.wide_size
            and self.transport != "gloo"
        )

    @model_validator(mode="after")
    def _cross_field(self) -> EngineConfig:
        if self.transport in ("nccl", "cuda_ipc") and self.num_gpus_per_actor == 0:
            raise ValueError(f"transport {self.transport!r} needs GPU actors (set num_gpus_per_actor > 0)")
        if self.transport == "nccl" and 0 < self.num_gpus_per_actor < 1:
            raise ValueError(
                "transport 'nccl' needs one GPU per actor; actors sharing a GPU use 'cuda_ipc' (or 'auto')"
            )
        if self.transport == "gloo" and self.num_gpus_per_actor > 0:
            raise ValueError(
                "transport 'gloo' moves CPU tensors only; GPU actors use 'nccl' (one GPU each), 'cuda_ipc' "
                "(sharing a GPU), 'object_store' or 'auto'"
            )
        if self.device == "cuda" and self.num_gpus_per_actor == 0:
            raise ValueError("device 'cuda' needs num_gpus_per_actor > 0")
        if self.latency_mode == "wide" and self.wide_size > self.num_stages:
            raise ValueError(
                f"wide_size {self.wide_size} needs at least that many actors (num_stages {self.num_stages})"
            )
        if self.latency_mode == "wide" and 0 < self.num_gpus_per_actor < 1:
            raise ValueError("latency_mode 'wide' needs one GPU per actor (NCCL has one rank per device) or CPU actors")
        if self.latency_mode == "wide" and self.transport == "gloo":
            raise ValueError(
                "latency_mode 'wide' forms its own torch.distributed group, which Ray's gloo transport also "
                "claims in each actor: use transport 'object_store' (or 'auto') on CPU actors"
            )
        if self.step_weights is not None and any(w <= 0 for w in self.step_weights):
            raise ValueError("step_weights must all be positive")
        return self


class ResolvedParams(BaseModel):
    """VideoParams with every model default filled in and checked against the model; what stages use."""

    model_config = ConfigDict(frozen=True)

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    min_guidance_scale: float
    max_guidance_scale: float
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    decode_chunk_size: int
    seed: int
    num_clips: int = 1
    color_match: bool = False

    @property
    def do_classifier_free_guidance(self) -> bool:
        # diffusers decides from max_guidance_scale > 1 before it builds the per-frame scales.
        return self.max_guidance_scale > 1


def resolve_params(
    params: VideoParams,
    spec: ModelSpec,
    max_video_pixels: int | None = None,
    max_decode_chunk: int | None = None,
    max_clips: int | None = None,
) -> ResolvedParams:
    """Fill model defaults, pick a random seed if none, and check what depends on the model (limits.py) and,
    when given, this deployment's caps on num_frames x height x width and on num_clips.

    `max_decode_chunk` is the largest decode chunk the GPU actors' memory holds (memory.max_decode_chunk; None
    on CPU actors): an unset or 'auto' decode_chunk_size becomes min(num_frames, it), else num_frames."""
    import secrets

    from svdpipe.limits import check_request

    height = params.height if params.height is not None else spec.default_height
    width = params.width if params.width is not None else spec.default_width
    num_frames = params.num_frames if params.num_frames is not None else spec.default_num_frames
    values = params.model_dump()
    values.update(
        height=height,
        width=width,
        num_frames=num_frames,
        decode_chunk_size=_decode_chunk(params.decode_chunk_size, num_frames, max_decode_chunk),
        seed=params.seed if params.seed is not None else secrets.randbelow(2**63),
    )
    resolved = ResolvedParams(**values)
    check_request(resolved, spec, max_video_pixels, max_clips)
    return resolved


def _decode_chunk(asked: int | Literal["auto"] | None, num_frames: int, max_decode_chunk: int | None) -> int:
    if isinstance(asked, int):
        return asked
    return num_frames if max_decode_chunk is None else max(1, min(num_frames, max_decode_chunk))
