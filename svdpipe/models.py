"""Loading SVD's components: the built-in tiny model, random full-size models, local directories, hub ids."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from svdpipe.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from diffusers import StableVideoDiffusionPipeline

logger = logging.getLogger(__name__)

Part = Literal["encoder", "unet", "decoder"]
ALL_PARTS: tuple[Part, ...] = ("encoder", "unet", "decoder")
BUILT_IN = ("tiny", "random-full", "random-full-xt")

# Which pipeline components each part of the work needs.
_COMPONENTS: dict[str, tuple[str, ...]] = {
    "encoder": ("image_encoder", "vae"),
    "unet": ("unet",),
    "decoder": ("vae",),
}
_LAYOUT = ("model_index.json", "unet", "vae", "image_encoder", "scheduler", "feature_extractor")


@dataclass(frozen=True)
class ModelSpec:
    """What request validation needs to know about a model, without loading weights."""

    default_height: int
    default_width: int
    default_num_frames: int
    size_multiple: int  # height and width must be multiples of this
    # Channels per level and VAE norm groups: the smallest runnable size follows from them (limits.py). The
    # defaults are SVD's, whose channels leave every size runnable.
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_groups: int = 32
    unet_channels: tuple[int, ...] = (320, 640, 1280, 1280)

    @classmethod
    def from_configs(cls, unet_config: Any, vae_config: Any) -> ModelSpec:
        vae_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
        size = unet_config["sample_size"] * vae_factor
        # Only the VAE constrains the size: the UNet forwards each skip connection's size to its up-samplers,
        # so any latent size works (checked on the 4-level SVD UNet with 9x9 and 3x5 latents).
        return cls(
            size,
            size,
            unet_config["num_frames"],
            vae_factor,
            tuple(vae_config["block_out_channels"]),
            vae_config.get("norm_num_groups", 32),
            tuple(unet_config["block_out_channels"]),
        )

    def fewest_norm_values(self, height: int, width: int, num_frames: int) -> int:
        """Fewest values a GroupNorm group sees for this output size (torch needs at least 2)."""
        from svdpipe.limits import fewest_norm_values

        return fewest_norm_values(self.vae_channels, self.vae_groups, self.unet_channels, height, width, num_frames)


@dataclass
class SVDModel:
    """A StableVideoDiffusionPipeline holding only the components this process needs (others are None)."""

    pipe: StableVideoDiffusionPipeline
    unet_config: dict[str, Any]
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    # An fp32 copy of the VAE for encoding when the VAE runs in fp16 but must upcast to encode (force_upcast,
    # as SVD's does); None: encode with pipe.vae. A copy, so no request ever changes the shared VAE's dtype.
    encode_vae: Any = None


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but torch sees no CUDA GPU here")
    return torch.device(device)


def load_model(model: str, dtype: str = "fp32", device: str = "auto", parts: Collection[Part] = ALL_PARTS) -> SVDModel:
    """Load `model` ('tiny', 'random-full[-xt]', a directory or a hub id) with only the given parts."""
    import torch

    dev, dt = resolve_device(device), torch_dtype(dtype)
    needed = {c for p in parts for c in _COMPONENTS[p]}
    source = model_source(model)
    if source == "built-in":
        pipe = build_random_pipeline(model, needed)
    elif source == "directory":
        pipe = _from_pretrained(model, needed, source=f"directory {model}")
    else:
        pipe = _from_pretrained(model, needed, source=f"hub id {model!r}")
    unet_config = _unet_config(pipe, model)
    spec = ModelSpec.from_configs(unet_config, pipe.vae.config if pipe.vae is not None else _vae_config(model))
    pipe.to(device=dev, dtype=dt)
    if pipe.unet is not None:
        pipe.unet.eval()
    encode_vae = None
    if "encoder" in parts and pipe.vae is not None and dt == torch.float16 and pipe.vae.config.force_upcast:
        import copy

        encode_vae = copy.deepcopy(pipe.vae).to(dtype=torch.float32)
    return SVDModel(pipe=pipe, unet_config=unet_config, spec=spec, device=dev, dtype=dt, encode_vae=encode_vae)


def model_source(model: str) -> Literal["built-in", "directory", "hub"]:
    """Where `model` comes from; a clear error for a missing directory or a wrong layout."""
    if model in BUILT_IN:
        return "built-in"
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [name for name in _LAYOUT if not (path / name).exists()]
        if missing:
            raise ModelLoadError(
                f"{path} is not a StableVideoDiffusionPipeline directory: missing {', '.join(missing)} "
                "(expected the layout written by diffusers' save_pretrained)"
            )
        return "directory"
    parts = model.split("/")
    if len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~")):
        return "hub"
    raise ModelLoadError(
        f"model {model!r} is neither a built-in model ({', '.join(BUILT_IN)}), an existing directory, "
        "nor a hub id of the form 'org/name'"
    )


def model_spec(model: str) -> ModelSpec:
    """The request-validation facts of `model`, read from configs only (no weights)."""
    if model_source(model) == "built-in":
        from svdpipe.architectures import ARCHITECTURES

        unet, vae, _ = ARCHITECTURES[model]
        return ModelSpec.from_configs(unet, vae)
    return ModelSpec.from_configs(_unet_config(None, model), _vae_config(model))


def build_random_pipeline(name: str, components: Collection[str] | None = None) -> StableVideoDiffusionPipeline:
    """A randomly initialised SVD of a built-in architecture; identical weights in every process."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from svdpipe.architectures import ARCHITECTURES, SVD_SCHEDULER_CONFIG, TINY_SEED

    unet_cfg, vae_cfg, clip_cfg = ARCHITECTURES[name]
    wanted = set(components) if components is not None else {"unet", "vae", "image_encoder"}

    def seeded(build):  # each component from its own fixed seed, so parts built alone stay identical
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            return build()

    return StableVideoDiffusionPipeline(
        vae=seeded(lambda: AutoencoderKLTemporalDecoder(**vae_cfg)) if "vae" in wanted else None,
        image_encoder=seeded(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg)))
        if "image_encoder" in wanted
        else None,
        unet=seeded(lambda: UNetSpatioTemporalConditionModel(**unet_cfg)) if "unet" in wanted else None,
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG),
        feature_extractor=CLIPImageProcessor(),
    )


def _from_pretrained(name: str, needed: set[str], source: str) -> StableVideoDiffusionPipeline:
    from diffusers import StableVideoDiffusionPipeline

    skip = {c: None for c in ("unet", "vae", "image_encoder") if c not in needed}
    try:
        return StableVideoDiffusionPipeline.from_pretrained(name, **skip)
    except Exception as exc:  # diffusers/hub raise many types; the user needs one clear line
        hint = "" if Path(name).is_dir() else " (no network access to the hub? use a local directory instead)"
        raise ModelLoadError(f"could not load SVD from {source}: {type(exc).__name__}: {exc}{hint}") from exc


def _unet_config(pipe: StableVideoDiffusionPipeline | None, model: str) -> dict[str, Any]:
    if pipe is not None and pipe.unet is not None:
        return dict(pipe.unet.config)
    return _load_sub_config(model, "unet")


def _vae_config(model: str) -> dict[str, Any]:
    return _load_sub_config(model, "vae")


def _load_sub_config(model: str, sub: str) -> dict[str, Any]:
    if model in BUILT_IN:
        from svdpipe.architectures import ARCHITECTURES

        unet, vae, _ = ARCHITECTURES[model]
        return dict(unet if sub == "unet" else vae)
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    cls = UNetSpatioTemporalConditionModel if sub == "unet" else AutoencoderKLTemporalDecoder
    try:
        return dict(cls.load_config(model, subfolder=sub))
    except Exception as exc:
        raise ModelLoadError(f"could not read the {sub} config of {model!r}: {exc}") from exc
