"""DreamForge: an image-generation job system for Stable Diffusion XL on your own GPUs."""

__version__ = "0.1.0"
