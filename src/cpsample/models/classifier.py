"""The time-conditioned classifier p(y | x_t, t): the encoder half of a U-Net with a 2-way head (paper App. C).

Built from diffusers' own blocks (timestep embedding, down blocks, mid block) so it shares the denoiser's
layer conventions, and saved like any diffusers model (config.json + safetensors).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from torch import nn

from cpsample.models.denoiser import from_pretrained_safely


class TimeClassifier(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 1,
        block_out_channels: tuple = (32, 64, 64),
        layers_per_block: int = 1,
        num_labels: int = 2,
        norm_num_groups: int = 16,
        attention: bool = True,
    ):
        super().__init__()
        time_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        out_channels = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            in_ch, out_channels = out_channels, channels
            last = i == len(block_out_channels) - 1
            self.down_blocks.append(
                get_down_block(
                    "AttnDownBlock2D" if (last and attention) else "DownBlock2D",
                    num_layers=layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_channels,
                    temb_channels=time_dim,
                    add_downsample=not last,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    attention_head_dim=out_channels,
                    downsample_padding=1,
                )
            )
        self.mid_block = UNetMidBlock2D(
            in_channels=out_channels,
            temb_channels=time_dim,
            resnet_groups=norm_num_groups,
            attention_head_dim=out_channels,
            add_attention=attention,
        )
        self.norm_out = nn.GroupNorm(norm_num_groups, out_channels)
        self.act = nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(out_channels, num_labels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
        """Logits (N, num_labels) for noisy images x_t at diffusion step t."""
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        hidden = self.conv_in(sample)
        for block in self.down_blocks:
            hidden, _ = block(hidden, emb)
        hidden = self.mid_block(hidden, emb)
        hidden = self.pool(self.act(self.norm_out(hidden))).flatten(1)
        return self.head(hidden)


def trained_window(folder: str | Path | None) -> int | None:
    """The highest timestep a classifier folder was trained at (`train-classifier --max-t`, the scaled recipe's 500);
    None: every timestep, or nothing recorded. Above it the classifier has never seen an input: what it says there
    is noise, confident or not."""
    if folder is None:
        return None
    from cpsample.provenance import recorded_settings

    window = recorded_settings(folder).get("max_t")
    return int(window) if isinstance(window, (int, float)) else None


def load_classifier(folder: Path, device: str | torch.device = "cpu") -> TimeClassifier:
    folder = Path(folder)
    path = folder / "classifier" if (folder / "classifier" / "config.json").exists() else folder
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{folder}: no classifier here (expected classifier/config.json, as written by train-classifier)"
        )
    return from_pretrained_safely(TimeClassifier, path).to(device).eval()
