"""Score Distillation Sampling (DreamFusion, Poole et al., ICLR 2023, https://arxiv.org/abs/2209.14988).

We want a 3D model θ whose renders x = g(θ) "look like good images when rendered from random angles" to a frozen
text-to-image diffusion model ε_φ. DreamFusion's four steps, for one rendered image:

  1. render x = g(θ) from a random camera (done by the caller);
  2. add noise: x_t = √ᾱ_t x + √(1−ᾱ_t) ε,  t ~ U(t_min, t_max), ε ~ N(0, I)           (DDPM eq. 4)
  3. predict the noise with classifier-free guidance:
         ε̂_φ(x_t; y, t) = (1 + ω) ε_φ(x_t; y, t) − ω ε_φ(x_t; t)
  4. step on θ along

     with the U-Net Jacobian (the gradient of the diffusion loss L_Diff = E[w(t) ‖ε̂_φ(x_t; y, t) − ε‖²]):
         ∇_θ L_Diff = E[ w(t) (ε̂_φ − ε) · ∂ε̂_φ/∂x_t · ∂x_t/∂x · ∂x/∂θ ]
     without it (SDS, DreamFusion eq. 3) — the Jacobian is "expensive to compute … and poorly conditioned for
     small noise levels", and dropping it still gives an effective gradient:
         ∇_θ L_SDS = E[ w(t) (ε̂_φ − ε) · ∂x/∂θ ]

Autograd computes ∂x/∂θ for us through the renderer: SDS is written as the surrogate loss
½‖x − sg[x − w(t)(ε̂ − ε)]‖², whose gradient w.r.t. x is exactly w(t)(ε̂ − ε) (sg = stop-gradient).

Defaults: w(t) = 1 − ᾱ_t (DreamFusion's choice, which down-weights the clean end t → 0) and a large guidance
ω: SDS is mode-seeking and only converges to sharp, saturated objects at high ω (DreamFusion uses ω = 100;
ProlificDreamer notes SDS "does not converge well without a high CFG weight"). The pocket prior is small and
saturates earlier; ω = 30 is its measured sweet spot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from text3d_edu.priors import Conditioning, DiffusionPrior


@dataclass
class SDSConfig:
    """ω (guidance), the range of t as fractions of T, w(t), and whether to backprop through the U-Net."""

    guidance: float = 30.0
    t_range: tuple[float, float] = (0.02, 0.98)
    weighting: str = "1-alpha_bar"  # w(t): "1-alpha_bar" (DreamFusion) or "uniform"
    unet_jacobian: bool = False

    def __post_init__(self):
        if self.weighting not in ("1-alpha_bar", "uniform"):
            raise ValueError(f"unknown weighting {self.weighting!r}: use '1-alpha_bar' or 'uniform'")
        if not 0.0 <= self.t_range[0] < self.t_range[1] <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= t_min < t_max <= 1, got {self.t_range}")


def weight(alpha_bar: Tensor, weighting: str) -> Tensor:
    """w(t) for ᾱ_t (B,) → (B,)."""
    return 1.0 - alpha_bar if weighting == "1-alpha_bar" else torch.ones_like(alpha_bar)


def sample_timesteps(prior: DiffusionPrior, batch: int, t_range: tuple[float, float],
                     generator: torch.Generator | None = None) -> Tensor:
    """t ~ U[t_min·T, t_max·T) as integer timesteps (B,)."""
    low, high = int(t_range[0] * prior.num_train_timesteps), int(t_range[1] * prior.num_train_timesteps)
    return torch.randint(low, max(high, low + 1), (batch,), generator=generator)


def sds_loss(prior: DiffusionPrior, images: Tensor, cond: Conditioning, uncond: Conditioning,
             config: SDSConfig | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """The SDS loss of rendered ``images`` (B, 3, H, W) in [0, 1] for the condition ``cond`` (1 or B rows).

    Returns (loss, info): backpropagating ``loss`` puts the SDS gradient (or, with ``unet_jacobian``, the full
    diffusion-loss gradient) into whatever produced ``images``. ``info`` holds t (B,), w (B,) and the per-pixel
    model-space gradient ``grad`` = w(t)(ε̂ − ε) (B, C, h, w) for analysis.
    """
    config = config or SDSConfig()
    x = prior.images_to_model(images)  # x = g(θ) in the prior's space (identity-like for pixels, VAE for SD)
    batch = x.shape[0]
    t = sample_timesteps(prior, batch, config.t_range, generator)
    noise = torch.randn(x.shape, generator=generator).to(x)  # ε
    alpha_bar = prior.alphas_cumprod.to(x)[t]  # ᾱ_t (B,)
    w = weight(alpha_bar, config.weighting).reshape(-1, 1, 1, 1)
    if config.unet_jacobian:
        x_t = prior.add_noise(x, t, noise)  # gradients flow through x_t into the U-Net and back to θ
        eps_hat = prior.guided_noise(x_t, t, cond, uncond, config.guidance)
        loss = 0.5 * (w * (eps_hat - noise) ** 2).sum() / batch  # the diffusion loss L_Diff itself
        grad = (w * (eps_hat - noise)).detach()
    else:
        with torch.no_grad():
            x_t = prior.add_noise(x.detach(), t, noise)
            eps_hat = prior.guided_noise(x_t, t, cond, uncond, config.guidance)
            grad = w * (eps_hat - noise)  # the noise residual, weighted: DreamFusion eq. 3 without ∂x/∂θ
        target = (x - grad).detach()  # stop-gradient: the U-Net Jacobian is never formed
        loss = 0.5 * ((x - target) ** 2).sum() / batch  # ∂loss/∂x = grad / B
    return loss, {"t": t, "w": w.flatten(), "grad": grad}
