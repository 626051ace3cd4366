"""SDFusion's denoiser (Cheng et al., CVPR 2023, sec. 3.2–3.3): a small 3D U-Net ε_θ(z_t, t, c) on the VQ-VAE's
latent z (3 × 8³, standardised: ``vqvae``), trained on the latent-diffusion loss

    L(θ, {φ_i}) = E_{z, c, ε~N(0, I), t} ‖ε − ε_θ(z_t, t, F{E_φi(c_i)})‖²,     z_t = √ᾱ_t z + √(1−ᾱ_t) ε

with three conditions c_i, each dropped independently in training (so that the sampler can ask for any subset,
∅ included, for the multi-modal classifier-free guidance of ``sampler``):

- text: the frozen pocket CLIP's text features f_T (B, E) of the caption (the paper: BERT through its E_φ);
- image: the frozen pocket CLIP's image features f_I (B, E) of a render (the paper: CLIP's image encoder);
- partial shape: the latent of the masked SDF and the mask at the latent's resolution (B, 4, 8, 8, 8) (the paper
  completes shapes by diffusing with the known part of the latent; we also give it as a condition).

How the conditions enter (F): text and image, scaled by √E (the pocket CLIP's features are unit vectors), go
through their own linear E_φi and are added to the timestep embedding, which every residual block reads (scale and
shift after its first normalisation); the partial shape is concatenated with z_t as input channels. The paper's
U-Net uses cross-attention for text and image; ours, for a pooled 64-d feature, adds it. A dropped condition is a
zero input. Attention (self-attention over the 4³ = 64 positions) sits at the coarsest level, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONDITIONS = ("text", "image", "partial")


@dataclass
class UNetConfig:
    latent_channels: int = 3  # z's channels (the VQ-VAE's)
    width: int = 48  # channels at 8³; 2·width at 4³
    clip_dim: int = 64  # E: the pocket CLIP's feature size (text and image)
    heads: int = 4  # attention heads at the coarsest level


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """The transformer's sinusoidal embedding of the timesteps t (B,) → (B, dim) (DDPM's, as in diffusers)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv, the embedding's scale and shift, GroupNorm–SiLU–conv, plus a skip:
    x (B, C_in, d, d, d), emb (B, E) → (B, C_out, d, d, d)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv3d(c_in, c_out, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv3d(c_out, c_out, 3, 1, 1)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1, 1) each
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention3d(nn.Module):
    """Multi-head self-attention over the d³ positions of a feature volume (B, C, d, d, d) → same shape."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, d³, C)
        out = self.attention(tokens, tokens, tokens, need_weights=False)[0]
        return x + out.transpose(1, 2).reshape(x.shape)


class LatentUNet(nn.Module):
    """ε_θ(z_t, t, c): z_t (B, 3, 8, 8, 8), t (B,), text / image features (B, E) or None, partial (B, 4, 8, 8, 8) or
    None (None: the condition is dropped, ∅) → ε̂ (B, 3, 8, 8, 8)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        w, c = config.width, config.latent_channels
        emb = 4 * w
        self.time = nn.Sequential(nn.Linear(w, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.text = nn.Linear(config.clip_dim, emb)  # E_φ of the text features
        self.image = nn.Linear(config.clip_dim, emb)  # E_φ of the image features
        self.stem = nn.Conv3d(c + c + 1, w, 3, 1, 1)  # z_t, then the partial shape's latent and mask
        self.down = ResBlock(w, w, emb)  # 8³
        self.downsample = nn.Conv3d(w, 2 * w, 3, 2, 1)  # → 4³
        self.mid1, self.attention, self.mid2 = ResBlock(2 * w, 2 * w, emb), Attention3d(2 * w, config.heads), \
            ResBlock(2 * w, 2 * w, emb)
        self.upsample = nn.ConvTranspose3d(2 * w, w, 4, 2, 1)  # → 8³
        self.up = ResBlock(2 * w, w, emb)  # the upsampled features and the skip
        self.out = nn.Sequential(nn.GroupNorm(8, w), nn.SiLU(), nn.Conv3d(w, c, 3, 1, 1))

    def forward(self, z_t: Tensor, t: Tensor, text: Tensor | None = None, image: Tensor | None = None,
                partial: Tensor | None = None) -> Tensor:
        b, c = z_t.shape[:2]
        absent = z_t.new_zeros(b, self.config.clip_dim)  # ∅: a dropped condition is a zero input, as in training
        text = absent if text is None else text
        image = absent if image is None else image
        partial = z_t.new_zeros(b, c + 1, *z_t.shape[2:]) if partial is None else partial
        # the pocket CLIP's features are unit vectors (each coordinate ~1/√E): × √E puts them at the unit scale the
        # Linear's initialisation and Adam's step size assume; unscaled, the text moved the embedding ~8× slower
        # and text → shape named the right kind for 4-6 of 26 prompts (with train.DROP's rates, see there)
        scale = math.sqrt(self.config.clip_dim)
        emb = self.time(timestep_embedding(t, self.config.width)) + self.text(scale * text) + self.image(scale * image)
        h = self.stem(torch.cat([z_t, partial], dim=1))  # (B, w, 8, 8, 8)
        skip = self.down(h, emb)
        h = self.downsample(skip)  # (B, 2w, 4, 4, 4)
        h = self.mid2(self.attention(self.mid1(h, emb)), emb)
        h = self.up(torch.cat([self.upsample(h), skip], dim=1), emb)  # (B, w, 8, 8, 8)
        return self.out(h)
