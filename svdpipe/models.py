"""Loading SVD's components: the built-in tiny model, random full-size models, local directories, hub ids."""

from __future__ import annotations

import logging
import warnings
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

    def innermost_positions(self, height: int, width: int) -> int:
        """Latent positions at the UNet's innermost level for this output size (each down-sampler, 3x3 with
        stride 2 and padding 1, takes the ceiling of half): a wide step splits them over its ranks."""
        h, w = height // self.size_multiple, width // self.size_multiple
        for _ in range(len(self.unet_channels) - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h * w

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
    # An fp32 copy of the VAE's encoder half (no decoder) for encoding when the VAE runs in fp16 but must upcast
    # to encode (force_upcast, as SVD's does); None: encode with pipe.vae. A copy, so no request ever changes
    # the shared VAE's dtype; without the decoder, so the copy costs the encoder's weights only.
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
        pipe = _from_pretrained(model, needed, dt, source=f"directory {model}")
    else:
        pipe = _from_pretrained(model, needed, dt, source=f"hub id {model!r}")
    unet_config = _unet_config(pipe, model)
    spec = ModelSpec.from_configs(unet_config, pipe.vae.config if pipe.vae is not None else _vae_config(model))
    pipe.to(device=dev, dtype=dt)
    if pipe.unet is not None:
        pipe.unet.eval()
    encode_vae = None
    if "encoder" in parts and pipe.vae is not None and dt == torch.float16 and pipe.vae.config.force_upcast:
        encode_vae = encoder_copy(pipe.vae)
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


def encoder_copy(vae: Any) -> Any:
    """An fp32 copy of `vae` without its decoder: what diffusers' upcast encode runs (encoder + quant_conv),
    for a fraction of the whole VAE's weights."""
    import copy

    import torch

    decoder = vae.decoder
    vae.decoder = None  # not copied; restored below
    try:
        encoder_only = copy.deepcopy(vae)
    finally:
        vae.decoder = decoder
    return encoder_only.to(dtype=torch.float32)


def _from_pretrained(name: str, needed: set[str], dtype: torch.dtype, source: str) -> StableVideoDiffusionPipeline:
    from diffusers import StableVideoDiffusionPipeline

    skip = {c: None for c in ("unet", "vae", "image_encoder") if c not in needed}
    try:
        # Loaded in the target dtype: never an fp32 copy of the weights in host memory per actor. `torch_dtype`
        # is what every diffusers >= 0.35 takes; newer ones also take `dtype` and warn about the old name.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
            return StableVideoDiffusionPipeline.from_pretrained(name, torch_dtype=dtype, **skip)
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


_WEIGHT_DIRS = ("unet", "vae", "image_encoder")


def weight_bytes(model: str, dtype: str) -> int | None:
    """Bytes of one copy's weights (UNet, VAE, CLIP; plus the fp32 VAE encoder copy an fp16 model keeps) in
    `dtype`, counted without loading: built-in models from their architecture on torch's meta device, local
    directories from their safetensors headers; None when unknown (a hub id, or .bin weights)."""

    size = torch_dtype(dtype).itemsize
    source = model_source(model)
    if source == "built-in":
        counts = _built_in_counts(model)
    elif source == "directory":
        counts = _safetensors_counts(Path(model).expanduser())
        if counts is None:
            return None
    else:
        return None
    total = (counts["unet"] + counts["vae"] + counts["image_encoder"]) * size
    vae_cfg = _vae_config(model)
    if dtype == "fp16" and vae_cfg.get("force_upcast", True):
        total += counts["vae_encoder"] * 4
    return total


def _built_in_counts(name: str) -> dict[str, int]:
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from svdpipe.architectures import ARCHITECTURES

    unet_cfg, vae_cfg, clip_cfg = ARCHITECTURES[name]
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder(**vae_cfg)
        parts = {
            "unet": UNetSpatioTemporalConditionModel(**unet_cfg),
            "vae": vae,
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg)),
        }
        counts = {k: _elements(m) for k, m in parts.items()}
    counts["vae_encoder"] = _elements(vae.encoder) + _elements(vae.quant_conv)
    return counts


def _elements(module: Any) -> int:
    """Elements of the weights a checkpoint holds (parameters and persistent buffers)."""
    return sum(t.numel() for t in module.state_dict().values())


def _safetensors_counts(path: Path) -> dict[str, int] | None:
    """Elements per component from the safetensors headers (8-byte length + JSON), without reading tensors."""
    import json
    import math
    import struct

    counts: dict[str, int] = {"vae_encoder": 0}
    for sub in _WEIGHT_DIRS:
        files = [f for f in sorted((path / sub).glob("*.safetensors")) if ".fp16." not in f.name]
        files = files or sorted((path / sub).glob("*.safetensors"))
        if not files:
            return None
        counts[sub] = 0
        for f in files:
            with f.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                n = math.prod(info["shape"])
                counts[sub] += n
                if sub == "vae" and key.startswith(("encoder.", "quant_conv.")):
                    counts["vae_encoder"] += n
    return counts
