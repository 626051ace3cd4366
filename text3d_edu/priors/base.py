"""The two prior interfaces every guidance method is written against: a CLIP-like text–image prior and a
text-conditioned diffusion prior. Pocket (tiny, shipped) and real (OpenCLIP, Stable Diffusion) backends both
implement them, so SDS, VSD and the CLIP loss are written once.

Diffusion notation (the lecture's symbols):
- forward process, DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239) eq. 4:
  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,  ε ~ N(0, I)                                             → ``add_noise``
- the network ε_φ(x_t; y, t) is trained with DDPM's simplified loss, eq. 14: ‖ε − ε_φ(x_t; y, t)‖²
- classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598, eq. 6), in the seed's form:
  ε̂_φ(x_t; y, t) = (1 + ω) ε_φ(x_t; y, t) − ω ε_φ(x_t; t)                              → ``guided_noise``
  diffusers' ``guidance_scale`` s is 1 + ω (ε̂ = ε_uncond + s (ε_cond − ε_uncond)): ω = 0 is no guidance.
- sampling: DDIM (Song et al. 2021, https://arxiv.org/abs/2010.02502, eq. 12 with σ = 0), deterministic
  given x_T                                                                          → ``iter_sample`` / ``sample``
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def check_prompts(prompts: list[str]) -> list[str]:
    """Reject an empty list, a bare string or an empty prompt with a ValueError that says what to pass."""
    if isinstance(prompts, str):
        raise ValueError(f"expected a list of prompts, got the string {prompts!r}; pass [{prompts!r}]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("expected at least one prompt, got an empty list")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"empty prompt {prompt!r}: give a caption such as 'a red mug' "
                             "(the unconditional branch is encode_unconditional(n))")
    return prompts


def check_images(images: Tensor, channels: int = 3, name: str = "images") -> Tensor:
    """Images must be (B, C, H, W) floats; raise a ValueError naming the expected shape otherwise."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != channels:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected {name} of shape (B, {channels}, H, W), got {shape}"
                         + (" (channels last? use images.permute(0, 3, 1, 2))"
                            if isinstance(images, Tensor) and images.ndim == 4 and images.shape[-1] == channels
                            else ""))
    return images


def resize(images: Tensor, size: int) -> Tensor:
    """(B, C, H, W) → (B, C, size, size), bilinear with antialiasing; differentiable; a no-op at that size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class TextImagePrior(ABC):
    """A CLIP-like prior (Radford et al. 2021, https://arxiv.org/abs/2103.00020): text and images embedded in one
    space, where the cosine similarity of a caption and an image says how well they match.

    ``image_size``: the encoder's input size; images of any size are resized inside ``encode_image``.
    """

    image_size: int

    @abstractmethod
    def encode_text(self, texts: list[str]) -> Tensor:
        """Captions (B,) → unit-norm embeddings (B, D)."""

    @abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] → unit-norm embeddings (B, D), differentiable w.r.t. the images."""

    def similarity(self, images: Tensor, texts: list[str]) -> Tensor:
        """Cosine similarities (B_img, B_txt) = encode_image(images) · encode_text(texts)ᵀ, in [−1, 1]."""
        return self.encode_image(images) @ self.encode_text(texts).T


@dataclass
class Conditioning:
    """What a diffusion prior is conditioned on: per-token text features (B, L, D), as Stable Diffusion's
    cross-attention reads them, and optionally a pooled text embedding (B, D_pool) added to the time embedding."""

    hidden_states: Tensor
    pooled: Tensor | None = None

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def expand(self, batch: int) -> Conditioning:
        """Broadcast a single condition (1 row) to ``batch`` rows; a condition of ``batch`` rows is unchanged."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"conditioning has {len(self)} rows; expected 1 or {batch} (the batch of x_t)")
        pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
        return Conditioning(self.hidden_states.expand(batch, -1, -1), pooled)

    def repeat_interleave(self, n: int) -> Conditioning:
        """Each row n times: prompts (P,) → (P·n,), for n samples per prompt."""
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(n, dim=0)
        return Conditioning(self.hidden_states.repeat_interleave(n, dim=0), pooled)

    @staticmethod
    def cat(conditions: list[Conditioning]) -> Conditioning:
        """Stack conditions along the batch: rows (B₁,), (B₂,), … → (B₁ + B₂ + …,)."""
        pooled = None if conditions[0].pooled is None else torch.cat([c.pooled for c in conditions])
        return Conditioning(torch.cat([c.hidden_states for c in conditions]), pooled)


class PromptCache:
    """Conditions of a few prompts (a prompt and its view-dependent variants), each encoded once by
    ``prior.encode_prompt``: ``cache(prompts)`` (B,) → their Conditioning rows (B,)."""

    def __init__(self, prior: DiffusionPrior):
        self.prior, self.cache = prior, {}

    def __call__(self, prompts: list[str]) -> Conditioning:
        for p in set(prompts) - set(self.cache):
            self.cache[p] = self.prior.encode_prompt([p])
        return Conditioning.cat([self.cache[p] for p in prompts])


class DiffusionPrior(ABC):
    """A text-conditioned diffusion model ε_φ(x_t; y, t) with its noise schedule.

    Attributes: ``alphas_cumprod`` ᾱ_t (T,), ``num_train_timesteps`` T, ``image_size`` (pixels of the images it
    makes), ``model_shape`` (C, h, w) of x_t (pixels, or latents for Stable Diffusion), ``scheduler_config``
    (a diffusers scheduler config: DDIM is built from it).
    """

    alphas_cumprod: Tensor
    num_train_timesteps: int
    image_size: int
    model_shape: tuple[int, int, int]
    scheduler_config: dict

    @abstractmethod
    def encode_prompt(self, prompts: list[str]) -> Conditioning:
        """Prompts (B,) → the condition y (B rows). An empty prompt raises a ValueError."""

    @abstractmethod
    def encode_unconditional(self, batch: int = 1) -> Conditioning:
        """The empty prompt "" (B rows): the condition of the unconditional branch ε_φ(x_t; t)."""

    @abstractmethod
    def predict_noise(self, x_t: Tensor, t: Tensor | int, cond: Conditioning) -> Tensor:
        """ε_φ(x_t; y, t): x_t (B, C, h, w), t int or (B,), cond with B or 1 rows → (B, C, h, w).
        Differentiable w.r.t. x_t (SDS "with the U-Net Jacobian" backprops through it)."""

    @abstractmethod
    def images_to_model(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] → x_0 (B, C, h, w) in the model's space."""

    @abstractmethod
    def model_to_images(self, x_0: Tensor) -> Tensor:
        """x_0 (B, C, h, w) → images (B, 3, image_size, image_size) in [0, 1]."""

    # --- shared by every backend ------------------------------------------------------------------------------

    def check_model_input(self, x_t: Tensor) -> Tensor:
        if not isinstance(x_t, Tensor) or x_t.ndim != 4 or tuple(x_t.shape[1:]) != tuple(self.model_shape):
            shape = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"expected x_t of shape (B, {', '.join(map(str, self.model_shape))}), got {shape}")
        return x_t

    def timesteps_for(self, t: Tensor | int, batch: int) -> Tensor:
        """t as an int or (B,) / (1,) → a (B,) long tensor in [0, T)."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"expected t as an int or of shape ({batch},), got {tuple(t.shape)}")
        if int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps:
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t.tolist()}")
        return t

    def add_noise(self, x_0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """DDPM eq. 4, the forward process: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε. x_0, noise (B, C, h, w); t int or (B,)."""
        if x_0.shape != noise.shape:
            raise ValueError(f"x_0 {tuple(x_0.shape)} and noise {tuple(noise.shape)} must have the same shape")
        t = self.timesteps_for(t, x_0.shape[0])
        alpha_bar = self.alphas_cumprod.to(x_0.device, x_0.dtype)[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * noise

    def guided_noise(self, x_t: Tensor, t: Tensor | int, cond: Conditioning, uncond: Conditioning,
                     omega: float) -> Tensor:
        """Classifier-free guidance: ε̂ = (1 + ω) ε_φ(x_t; y, t) − ω ε_φ(x_t; t), x_t (B, C, h, w) → (B, C, h, w).

        Both branches run as one batch of 2B. ω = 0 is the conditional model alone; diffusers' guidance_scale
        is s = 1 + ω.
        """
        batch = self.check_model_input(x_t).shape[0]
        t = self.timesteps_for(t, batch)
        both = Conditioning.cat([cond.expand(batch), uncond.expand(batch)])
        eps_cond, eps_uncond = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
        return (1 + omega) * eps_cond - omega * eps_uncond

    def ddim_scheduler(self, steps: int):
        """A diffusers ``DDIMScheduler`` on this prior's ᾱ_t schedule, set to ``steps`` sampling steps."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        return scheduler

    @torch.no_grad()
    def iter_sample(self, prompts: list[str], n: int = 1, guidance: float = 5.0, steps: int = 50,
                    generator: torch.Generator | None = None) -> Iterator[dict]:
        """DDIM sampling one step at a time, for notebooks that show the chain.

        Yields {"step", "t", "x_t" (B, C, h, w), "x0_pred" (B, C, h, w)} after every step, B = len(prompts)·n
        (prompt-major: the n samples of prompts[0] first). x_T ~ N(0, I) is drawn from ``generator``.
        """
        cond = self.encode_prompt(check_prompts(prompts)).repeat_interleave(n)
        uncond = self.encode_unconditional(1)
        scheduler = self.ddim_scheduler(steps)
        device = self.alphas_cumprod.device
        x = torch.randn((len(cond), *self.model_shape), generator=generator).to(device)  # x_T
        for i, t in enumerate(scheduler.timesteps):
            eps = self.guided_noise(x, int(t), cond, uncond, guidance)
            # use_clipped_model_output: re-derive ε from the clipped x̂_0, otherwise pixel-space samples go grainy
            out = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True)
            x = out.prev_sample
            yield {"step": i, "t": int(t), "x_t": x, "x0_pred": out.pred_original_sample}

    @torch.no_grad()
    def sample(self, prompts: list[str], n: int = 1, guidance: float = 5.0, steps: int = 50,
               generator: torch.Generator | None = None) -> Tensor:
        """Guided DDIM samples: images (len(prompts)·n, 3, image_size, image_size) in [0, 1], prompt-major."""
        x = None
        for state in self.iter_sample(prompts, n, guidance, steps, generator):
            x = state["x_t"]
        return self.model_to_images(x)
