"""SDFusion's sampling (Cheng et al., CVPR 2023, sec. 3.3): DDIM in the VQ-VAE's latent space with the multi-modal
classifier-free guidance of the paper's eq. 3 (the lecture's formula),

    ε = ε_θ(z_t, t, ∅) + Σ_i s_i (ε_θ(z_t, t, {c_i, c_j = ∅ ∀ j ≠ i}) − ε_θ(z_t, t, ∅)),

where each c_i (text, image, partial shape) is given alone in its own term and s_i sets its weight; and shape
completion: DDIM whose known region of the latent is replaced, at every step, by the partial shape's latent noised
to that step (the latent-diffusion inpainting the official code uses), then the known voxels pasted back.

The noise schedule is latent diffusion's (Rombach et al. 2022): T = 1000, √β_t linear from √0.00085 to √0.012.
DDIM (Song et al. 2021, eq. 12 with σ = 0): ẑ_0 = (z_t − √(1−ᾱ_t) ε) / √ᾱ_t, z_{t'} = √ᾱ_{t'} ẑ_0 + √(1−ᾱ_{t'}) ε.
"""

from __future__ import annotations

import torch
from torch import Tensor

from text3d_edu.sdfusion.unet import CONDITIONS, LatentUNet

T = 1000  # diffusion steps of training


def alphas_cumprod() -> Tensor:
    """ᾱ_t (T,) of latent diffusion's "scaled linear" schedule: β_t = (linspace(√0.00085, √0.012, T))²."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def add_noise(z_0: Tensor, noise: Tensor, t: Tensor, a_bar: Tensor) -> Tensor:
    """z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε (DDPM eq. 4): z_0, ε (B, C, d, d, d), t (B,) long → (B, C, d, d, d)."""
    a = a_bar[t].reshape(-1, *[1] * (z_0.dim() - 1))
    return a.sqrt() * z_0 + (1 - a).sqrt() * noise


def guided_epsilon(unet: LatentUNet, z_t: Tensor, t: Tensor, conditions: dict[str, Tensor],
                   scales: dict[str, float]) -> Tensor:
    """Multi-modal classifier-free guidance: ε = ε(z_t, ∅) + Σ_i s_i (ε(z_t, c_i) − ε(z_t, ∅)).

    z_t (B, C, d, d, d), t (B,); ``conditions`` maps names of ``unet.CONDITIONS`` to their inputs (B, …);
    ``scales`` maps the same names to s_i. One batched call evaluates ∅ and each condition alone → (B, C, d, d, d)."""
    unknown = set(conditions) - set(CONDITIONS)
    if unknown or set(scales) != set(conditions):
        raise ValueError(f"conditions {sorted(conditions)} and scales {sorted(scales)} must name the same members "
                         f"of {CONDITIONS}")
    names = list(conditions)
    b = z_t.shape[0]
    n = 1 + len(names)  # ∅, then each condition alone
    inputs = {}
    for name in names:
        alone = torch.zeros((n * b, *conditions[name].shape[1:]), dtype=z_t.dtype)
        k = 1 + names.index(name)
        alone[k * b:(k + 1) * b] = conditions[name]
        inputs[name] = alone
    eps = unet(z_t.repeat(n, *[1] * (z_t.dim() - 1)), t.repeat(n), **inputs).chunk(n)  # n × (B, C, d, d, d)
    return eps[0] + sum(scales[name] * (eps[1 + i] - eps[0]) for i, name in enumerate(names))


@torch.no_grad()
def ddim_sample(unet: LatentUNet, shape: tuple[int, ...], conditions: dict[str, Tensor], scales: dict[str, float],
                steps: int = 50, generator: torch.Generator | None = None, known: Tensor | None = None,
                known_mask: Tensor | None = None) -> Tensor:
    """DDIM (η = 0) from z_T ~ N(0, I) of ``shape`` (B, C, d, d, d) to ẑ_0, guided by ``guided_epsilon``.

    Completion: with ``known`` (B, C, d, d, d), a standardised latent, and ``known_mask`` (B, 1, d, d, d) (1 where
    known), before each step z_t ← m ⊙ q(known, t) + (1 − m) ⊙ z_t, with q(known, t) the known latent noised to t
    by the same ε each step draws; at the end m ⊙ known replaces ẑ_0's known region."""
    a_bar = alphas_cumprod()
    timesteps = torch.linspace(T - 1, 0, steps).round().long()  # t_S > … > t_1 = 0
    z = torch.randn(shape, generator=generator)
    for i, t in enumerate(timesteps):
        if known is not None:
            noise = torch.randn(shape, generator=generator)
            z = known_mask * add_noise(known, noise, t.repeat(shape[0]), a_bar) + (1 - known_mask) * z
        eps = guided_epsilon(unet, z, t.repeat(shape[0]), conditions, scales)
        a_t = a_bar[t]
        a_next = a_bar[timesteps[i + 1]] if i + 1 < steps else torch.tensor(1.0)
        z_0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()  # ẑ_0
        z = a_next.sqrt() * z_0 + (1 - a_next).sqrt() * eps
    if known is not None:
        z = known_mask * known + (1 - known_mask) * z
    return z
