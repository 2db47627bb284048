"""Architectures of SVD's components: the tiny test model and the published full-size configs.

Both are built with random weights in-process (no download). The tiny model follows diffusers' own test
components (block channels (32, 64)) but keeps SVD's structure where it matters for serving: a VAE that
downsamples 8x, a UNet with one more 2x level, CLIP at 224x224 with 14-pixel patches, and SVD's
EulerDiscreteScheduler config.
"""

from __future__ import annotations

from typing import Any

# SVD's scheduler_config.json (identical for img2vid and img2vid-xt).
SVD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

TINY_SEED = 0

TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 8,  # x8 VAE -> 64x64 pixels by default
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    "cross_attention_dim": 32,
    "num_attention_heads": 8,
    "projection_class_embeddings_input_dim": 96,
    "addition_time_embed_dim": 32,
    "num_frames": 4,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (32, 32, 32, 32),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
}
TINY_CLIP: dict[str, Any] = {
    "hidden_size": 32,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 14,
    "intermediate_size": 37,
}

# Published configs of stabilityai/stable-video-diffusion-img2vid(-xt); the UNet differs only in num_frames.
FULL_UNET: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ),
    "up_block_types": (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": (5, 10, 20, 20),
    "num_frames": 14,
}
FULL_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}
FULL_CLIP: dict[str, Any] = {  # ViT-H/14 image tower of OpenCLIP, as shipped in image_encoder/
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}

ARCHITECTURES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "tiny": (TINY_UNET, TINY_VAE, TINY_CLIP),
    "random-full": (FULL_UNET, FULL_VAE, FULL_CLIP),
    "random-full-xt": ({**FULL_UNET, "num_frames": 25}, FULL_VAE, FULL_CLIP),
}
