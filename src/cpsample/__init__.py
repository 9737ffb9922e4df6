"""cpsample: classifier-protected sampling for diffusion models, with the tools to measure how much a model copies."""

__version__ = "0.1.0"
