"""Variational Score Distillation (ProlificDreamer, Wang et al., NeurIPS 2023, https://arxiv.org/abs/2305.16213).

SDS looks for one 3D scene θ, and with it for the single mode of the prior: it only converges at a large guidance
ω, and then over-saturates and over-smooths. VSD treats the scene as a random variable with a distribution
q(θ | y), represented by n particles θ⁽¹⁾…θ⁽ⁿ⁾, and asks that the images it renders from every camera c,
x_0 = g(θ, c), be distributed like the prior's images of the prompt y. The gradient of that KL divergence needs
the score of the *rendered* images' distribution too, and VSD learns it with a second diffusion model ε_φ
(a LoRA of the pretrained one, also conditioned on the camera c), trained on the particles' own renders.

Algorithm 1 (the lecture's slide), with x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (DDPM eq. 4):

  1. initialise n particles {θ⁽ⁱ⁾} and ε_φ (at step 0 ε_φ = ε_pretrain: the LoRA and the camera MLP start at zero);
  2. while not converged:
  3.     pick a particle θ and a camera c (we take every particle, each from its own cameras, every step:
         the expected update is the same, with n times the renders);
  4.     render x_0 = g(θ, c);
  5.     θ step (ProlificDreamer eq. 9; the slide writes ω(t) for the weight, we keep SDS's w(t)):
             ∇_θ L_VSD = E_{t,ε,c}[ w(t) (ε̂_pretrain(x_t; y, t) − ε_φ(x_t; y, t, c)) ∂g(θ, c)/∂θ ]
         with ε̂_pretrain = (1 + ω) ε_pretrain(x_t; y, t) − ω ε_pretrain(x_t; t), classifier-free guidance;
         y carries the view suffix (", back view"), as in SDS;
  6.     φ step (eq. 8), on the detached renders, t ~ U(0, T):
             φ ← φ − η₂ ∇_φ E_{t,ε}‖ε_φ(x_t; y, t, c) − ε‖²
         with c replaced by zeros 10 % of the time, so that ε_φ also knows the camera-free ε_φ(x_t; y, t, ∅).

SDS is the special case where ε_φ predicts the added noise ε itself: then ε̂_pretrain − ε_φ = ε̂ − ε, SDS's
residual (``tests/test_vsd.py`` checks it). The learned ε_φ instead subtracts the score of what the particles
already render, so the update moves the distribution of the renders towards the prior's, rather than every render
towards the prior's single most likely image. At step 0 (ε_φ = ε_pretrain(x_t; y, t)) only the guidance term
ω(ε_pretrain(x_t; y, t) − ε_pretrain(x_t; t)) is left: VSD starts without SDS's noisy residual.

As in ``sds.py``, ∂g/∂θ comes from autograd through the renderer: the θ step is the surrogate loss
½‖x_0 − sg[x_0 − w(t)(ε̂_pretrain − ε_φ)]‖² (sg = stop-gradient), so neither U-Net Jacobian is formed.

ε_φ (``LoRANoisePredictor``): a deep copy of the frozen prior's U-Net with a rank-4 LoRA (Hu et al. 2021,
https://arxiv.org/abs/2106.09685) on its attention projections (peft, through diffusers' ``add_adapter``), plus a
camera embedding: the flattened 4×4 camera-to-world matrix through a small MLP whose last layer starts at zero.
The pocket U-Net already adds a projection of the pooled text embedding to its time embedding, so the camera
MLP's output (64-d) is added to the pooled text before that projection; Stable Diffusion's U-Net has no class
embedding, so, as threestudio's ``stable_diffusion_vsd_guidance`` does, the copy gets one, and the camera MLP's
output (the time embedding's width) is added to the time embedding. Either way ε_φ = ε_pretrain exactly at step 0.

Where ours differs from the paper and threestudio, and why:
- ω: the paper uses diffusers' guidance scale 7.5 (ω = 6.5 here) with Stable Diffusion, the ordinary sampling
  ω, where SDS needs ω = 100; the pocket default is ω = 7.5 (the pocket prior samples at ω = 5). ``generate``'s
  regularisers (sparsity, opaqueness) are priced against the guidance gradient at SDS's ω = 30, so for VSD they
  scale by ω / 30 (``GenerateConfig``). Unscaled, they outweigh the weak guidance: measured on "a brown house"
  (2 particles, 500 steps; silhouette IoU / frame share, truth 0.31), at ω = 5 VSD gives 0.46 / 0.15, a
  shrunken dark ball, and so does SDS at ω = 5 (0.48 / 0.15); at ω = 15 VSD 0.73 vs SDS 0.70; at ω = 30
  VSD 0.84 = SDS 0.84. Scaled, at ω = 7.5: VSD 0.84 (brown from 7 and 8 of the 8 views), SDS 0.85;
- ε_φ's own guidance: the official code mixes ε_φ with the camera and with the camera dropped at scale 1, i.e.
  the camera-conditioned ε_φ alone: ``lora_guidance`` ω_φ = 0 (another ω_φ uses the camera-dropped branch);
  like threestudio, ε_φ reads the plain prompt (no view suffix): the camera tells it the view;
- φ's optimiser: AdamW at lr 1e-3 (the paper's LoRA rate; threestudio's config uses 1e-4) — the paper runs 25k
  steps, we run a few hundred, so ε_φ must follow the particles quickly; the paper's range of t for the θ step
  (0.02 → 0.98, annealed to 0.5 after a fraction of the steps) is ``generate``'s ``anneal_t_max`` option;
- ε_φ copies the prior's own U-Net (threestudio loads Stable Diffusion 2.1, a v-prediction model, for ε_φ beside
  2.1-base); the pocket U-Net has attention only at 8×8, so its LoRA is 16k parameters, and the camera MLP
  (which reaches every block through the time embedding) carries much of what ε_φ learns;
- the camera is dropped per image (threestudio drops the whole batch's cameras on 10 % of the steps);
- ``generate`` starts the n particles as the same blob and updates all of them every step (the paper picks one
  at random per step, from independently initialised NeRFs): their own cameras, t and ε set them apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from text3d_edu.guidance.sds import sample_timesteps, weight
from text3d_edu.priors import Conditioning, DiffusionPrior

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # every attention projection of the U-Net


@dataclass
class VSDConfig:
    """ω for ε̂_pretrain, ε_φ's own ω_φ, the LoRA (rank, lr, φ steps per θ step), the camera dropout, the ranges
    of t (θ step and φ step, fractions of T), w(t) and the number of particles n."""

    guidance: float = 7.5  # ω of ε̂_pretrain: the prior's ordinary ω, not SDS's 30 (see above); Stable Diffusion: 6.5
    lora_guidance: float = 0.0  # ω_φ: ε_φ = (1 + ω_φ) ε_φ(·, c) − ω_φ ε_φ(·, ∅); 0 is the official scale 1
    lora_lr: float = 1e-3
    lora_rank: int = 4
    camera_dropout: float = 0.1
    t_range: tuple[float, float] = (0.02, 0.98)
    lora_t_range: tuple[float, float] = (0.0, 1.0)  # the φ step learns every noise level: t ~ U(0, T)
    weighting: str = "1-alpha_bar"  # w(t): "1-alpha_bar" (DreamFusion, threestudio's VSD) or "uniform"
    lora_steps_per_theta_step: int = 1
    particles: int = 2

    def __post_init__(self):
        if self.weighting not in ("1-alpha_bar", "uniform"):
            raise ValueError(f"unknown weighting {self.weighting!r}: use '1-alpha_bar' or 'uniform'")
        for name in ("t_range", "lora_t_range"):
            low, high = getattr(self, name)
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= t_min < t_max <= 1, got {(low, high)}")
        if not isinstance(self.particles, int) or self.particles < 1:
            raise ValueError(f"particles must be a whole number n >= 1 of 3D scenes, got {self.particles!r} "
                             "(n = 1 is one scene, like SDS)")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise ValueError(f"lora_rank must be a whole number >= 1, got {self.lora_rank!r} (the paper uses 4)")
        if not self.lora_lr > 0:
            raise ValueError(f"lora_lr must be a positive learning rate, got {self.lora_lr}")
        if not 0.0 <= self.camera_dropout < 1.0:
            raise ValueError(f"camera_dropout must lie in [0, 1), got {self.camera_dropout}")
        if not isinstance(self.lora_steps_per_theta_step, int) or self.lora_steps_per_theta_step < 1:
            raise ValueError(f"lora_steps_per_theta_step must be a whole number >= 1, "
                             f"got {self.lora_steps_per_theta_step!r}")


class LoRANoisePredictor:
    """ε_φ(x_t; y, t, c): a LoRA on a deep copy of ``prior``'s frozen U-Net, plus a camera MLP.

    ``parameters()`` are φ: the LoRA matrices and the camera MLP, nothing of the copied U-Net; ``state_dict``
    holds only them (a checkpoint of Stable Diffusion's ε_φ is megabytes, not gigabytes).
    """

    def __init__(self, prior: DiffusionPrior, rank: int = 4):
        from peft import LoraConfig

        self.prior = prior
        self.unet = copy.deepcopy(prior.unet).requires_grad_(False)
        # init_lora_weights="gaussian": A ~ N(0, 1/r), B = 0, so B·A = 0 and ε_φ starts as ε_pretrain
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=LORA_TARGETS))
        self.lora = [p for p in self.unet.parameters() if p.requires_grad]
        for p in self.lora:  # φ is trained in float32 even over half-precision weights (peft casts x to it)
            p.data = p.data.float()
        width_time = self.unet.time_embedding.linear_2.out_features
        if self.unet.class_embedding is None:  # Stable Diffusion: give the copy a class embedding (threestudio)
            self.unet.class_embedding = nn.Identity()  # the camera MLP's output is added to the time embedding
            self.camera_into, width = "time", width_time
        elif self.unet.config.class_embed_type == "projection":  # pocket: class_labels = the pooled text (B, 64)
            self.camera_into, width = "pooled", self.unet.config.projection_class_embeddings_input_dim
        else:
            raise ValueError(f"cannot add a camera to a U-Net whose class embedding is "
                             f"{self.unet.config.class_embed_type!r}: expected none or 'projection'")
        device = next(self.unet.parameters()).device
        self.camera_mlp = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width)).to(device)
        nn.init.zeros_(self.camera_mlp[-1].weight)  # zero at init: ε_φ(x_t; y, t, c) = ε_pretrain(x_t; y, t)
        nn.init.zeros_(self.camera_mlp[-1].bias)

    def parameters(self) -> list[nn.Parameter]:
        """φ: the LoRA matrices and the camera MLP's weights."""
        return [*self.lora, *self.camera_mlp.parameters()]

    def state_dict(self) -> dict[str, Tensor]:
        unet = {name: p.detach().clone() for name, p in self.unet.named_parameters() if p.requires_grad}
        return {**{f"unet.{k}": v for k, v in unet.items()},
                **{f"camera_mlp.{k}": v.clone() for k, v in self.camera_mlp.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.state_dict()):
            raise ValueError("this ε_φ state does not fit the LoRA: was it saved with another rank or prior?")
        with torch.no_grad():
            for name, p in self.unet.named_parameters():
                if p.requires_grad:
                    p.copy_(state[f"unet.{name}"])
        self.camera_mlp.load_state_dict({k.removeprefix("camera_mlp."): v for k, v in state.items()
                                         if k.startswith("camera_mlp.")})

    def predict_noise(self, x_t: Tensor, t: Tensor | int, cond: Conditioning, cameras: Tensor) -> Tensor:
        """ε_φ(x_t; y, t, c): x_t (B, C, h, w), t int or (B,), cond (1 or B rows), cameras c2w (B, 4, 4) (zeros:
        no camera) → ε (B, C, h, w), differentiable w.r.t. φ."""
        prior = self.prior
        batch = prior.check_model_input(x_t).shape[0]
        t = prior.timesteps_for(t, batch).to(x_t.device)
        cond = cond.expand(batch)
        dtype = self.unet.dtype
        camera = self.camera_mlp(cameras.reshape(batch, 16).to(x_t.device, torch.float32))  # (B, width)
        class_labels = cond.pooled + camera if self.camera_into == "pooled" else camera
        out = self.unet(x_t.to(dtype), t, encoder_hidden_states=cond.hidden_states.to(dtype),
                        class_labels=class_labels.to(dtype)).sample.to(x_t.dtype)  # (B, C, h, w)
        if getattr(prior, "prediction_type", "epsilon") == "v_prediction":  # as the prior: ε = √ᾱ v + √(1−ᾱ) x_t
            a = prior.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out


def vsd_loss(prior: DiffusionPrior, eps_phi: LoRANoisePredictor, images: Tensor, cameras: Tensor,
             cond: Conditioning, uncond: Conditioning, lora_cond: Conditioning | None = None,
             config: VSDConfig | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """The θ step: the VSD loss of renders ``images`` (B, 3, H, W) in [0, 1] of one particle from ``cameras``
    (c2w, (B, 4, 4)), for the condition ``cond`` of ε_pretrain (1 or B rows, with view suffixes) and ``lora_cond``
    of ε_φ (the plain prompt; default ``cond``).

    Returns (loss, info): backpropagating ``loss`` puts the VSD gradient into whatever produced ``images``.
    ``info`` holds t (B,), w (B,), the model-space gradient ``grad`` = w(t)(ε̂_pretrain − ε_φ) (B, C, h, w) and
    the detached x_0 (B, C, h, w) for the φ step. t and ε are drawn from ``generator`` in SDS's order.
    """
    config = config or VSDConfig()
    x = prior.images_to_model(images)  # x_0 = g(θ, c) in the prior's space
    batch = x.shape[0]
    t = sample_timesteps(prior, batch, config.t_range, generator)
    noise = torch.randn(x.shape, generator=generator).to(x)  # ε
    w = weight(prior.alphas_cumprod.to(x)[t], config.weighting).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        x_t = prior.add_noise(x.detach(), t, noise)
        eps_pretrain = prior.guided_noise(x_t, t, cond, uncond, config.guidance)  # ε̂_pretrain(x_t; y, t)
        lora_cond = lora_cond if lora_cond is not None else cond
        eps_camera = eps_phi.predict_noise(x_t, t, lora_cond, cameras)  # ε_φ(x_t; y, t, c)
        if config.lora_guidance:
            eps_free = eps_phi.predict_noise(x_t, t, lora_cond, torch.zeros_like(cameras))  # ε_φ(x_t; y, t, ∅)
            eps_camera = (1 + config.lora_guidance) * eps_camera - config.lora_guidance * eps_free
        grad = w * (eps_pretrain - eps_camera)  # ProlificDreamer eq. 9 without ∂g/∂θ
    target = (x - grad).detach()  # stop-gradient
    loss = 0.5 * ((x - target) ** 2).sum() / batch  # ∂loss/∂x_0 = grad / B
    return loss, {"t": t, "w": w.flatten(), "grad": grad, "x": x.detach()}


def lora_loss(prior: DiffusionPrior, eps_phi: LoRANoisePredictor, x: Tensor, cameras: Tensor, cond: Conditioning,
              config: VSDConfig | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """The φ step: DDPM's simple loss ‖ε_φ(x_t; y, t, c) − ε‖² (mean over elements) on detached renders x_0
    (B, C, h, w) in the prior's space, taken from ``cameras`` (c2w, (B, 4, 4)), with t ~ U(``lora_t_range``)
    and each camera replaced by zeros with probability ``camera_dropout``. Returns (loss, {"t": (B,)})."""
    config = config or VSDConfig()
    x = x.detach()  # φ learns the particles' images; no gradient reaches θ from here
    batch = x.shape[0]
    t = sample_timesteps(prior, batch, config.lora_t_range, generator)
    noise = torch.randn(x.shape, generator=generator).to(x)
    x_t = prior.add_noise(x, t, noise)
    dropped = torch.rand(batch, generator=generator) < config.camera_dropout  # (B,)
    cameras = torch.where(dropped.reshape(-1, 1, 1).to(cameras.device), torch.zeros_like(cameras), cameras)
    loss = F.mse_loss(eps_phi.predict_noise(x_t, t, cond, cameras).float(), noise.float())
    return loss, {"t": t}
