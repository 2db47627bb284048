"""Wide steps: one request's UNet call split over P ranks by frames and spatial positions, exact.

Submodules import torch lazily where they can; `splits`, `bytes` and `costs` are pure Python.
"""
