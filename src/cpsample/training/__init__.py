"""Training: one accelerate loop with EMA and safetensors resume, used by the denoiser and the classifier."""
