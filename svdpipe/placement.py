"""Pure decisions about the actor layout: which actors exist, what each holds, which transport links them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from svdpipe.config import EngineConfig
from svdpipe.errors import ConfigError

Role = Literal["model", "mux"]
ConcreteTransport = Literal["nccl", "cuda_ipc", "gloo", "object_store"]


@dataclass(frozen=True)
class ActorSpec:
    """One actor: its dashboard name, its role and its index among the actors of that role."""

    name: str
    role: Role
    index: int

    @property
    def parts(self) -> tuple[str, ...]:
        """The model parts (see models.load_model) this actor holds: all of them, or none for a mux actor."""
        return ("encoder", "unet", "decoder") if self.role == "model" else ()


def actor_layout(config: EngineConfig) -> list[ActorSpec]:
    """The model actors: N of them, each holding UNet, VAE and CLIP (one GPU each in the reference deployment).

    There are no dedicated encoder or decoder actors: the planner spreads each request's encode and decode
    over the model actors, so no GPU sits idle waiting for codec work or holds up the chain with it.
    """
    return [ActorSpec(f"{config.name_prefix}-model-{i}", "model", i) for i in range(config.num_stages)]


def mux_layout(config: EngineConfig) -> list[ActorSpec]:
    """The CPU-only actors that write video files."""
    return [ActorSpec(f"{config.name_prefix}-mux-{i}", "mux", i) for i in range(config.num_mux_actors)]


def bundles(config: EngineConfig) -> list[dict[str, float]]:
    """One placement-group bundle per actor: the model actors' first (with their GPUs), then the mux actors'."""
    bundle = {"CPU": config.num_cpus_per_actor}
    if config.num_gpus_per_actor > 0:
        bundle["GPU"] = config.num_gpus_per_actor
    mux = {"CPU": config.num_cpus_per_actor}
    return [dict(bundle) for _ in actor_layout(config)] + [dict(mux) for _ in mux_layout(config)]


def choose_transport(config: EngineConfig, gpus_available: float | None = None) -> ConcreteTransport:
    """The latent transport for this placement; 'auto' picks the fastest one that can work.

    GPU actors with a GPU each use NCCL; actors sharing a GPU use CUDA IPC (NCCL cannot run two ranks on
    one device); CPU actors use the object store: gloo routes every hop through the group's creator (it
    submits a send and a receive task per transfer), which on this 2-core machine cost ~5 ms per hop against
    ~2.5 ms for the object store with 64 KB latents (gloo only won at 4 MB: ~6.5 vs ~11 ms).
    """
    gpus = config.num_gpus_per_actor
    if gpus_available is not None and gpus > 0:
        needed = gpus * len(actor_layout(config))
        if gpus_available + 1e-9 < needed:
            raise ConfigError(
                f"{len(actor_layout(config))} actors x {gpus} GPU need {needed:g} GPUs; the cluster has "
                f"{gpus_available:g}"
            )
    if config.transport != "auto":
        return config.transport
    if gpus >= 1:
        return "nccl"
    if gpus > 0:
        return "cuda_ipc"
    return "object_store"


def check_devices(transport: ConcreteTransport, names: Sequence[str], uuids: Sequence[str | None]) -> None:
    """The actors' devices (a GPU's UUID, None for the CPU) suit `transport`: CUDA IPC maps one device's memory
    into another process, so every actor must be on the same physical GPU (a fractional bundle on a multi-GPU
    node may land on any of them); NCCL needs GPU actors. Raises ConfigError naming where each actor runs."""
    if len(names) != len(uuids):
        raise ValueError("one device UUID per actor")
    if transport not in ("cuda_ipc", "nccl"):
        return
    where = ", ".join(f"{n} on {u or 'the CPU'}" for n, u in zip(names, uuids, strict=True))
    if any(u is None for u in uuids):
        raise ConfigError(f"transport {transport!r} needs every model actor on a GPU: {where}")
    if transport == "cuda_ipc" and len(set(uuids)) > 1:
        raise ConfigError(
            f"transport 'cuda_ipc' needs every model actor on one physical GPU, but they are spread over "
            f"{len(set(uuids))}: {where}. Use 'nccl' with one GPU per actor, 'object_store', or a node with one GPU"
        )
