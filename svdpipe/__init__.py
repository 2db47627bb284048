"""svdpipe: Stable Video Diffusion inference with the denoising steps split across a chain of workers."""

__version__ = "0.1.0"
