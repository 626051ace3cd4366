"""Priors: a CLIP-like text–image prior and a text-conditioned diffusion prior behind one interface.

Later lectures write their methods (CLIP loss, SDS, VSD) once against ``TextImagePrior`` / ``DiffusionPrior``
and pick a backend here:

- ``"pocket"`` (default): tiny models trained on the Pocket World, shipped as safetensors in
  ``text3d_edu/weights`` and loaded offline (``pocket_clip``, ``pocket_diffusion``; trained by ``train``);
- ``"pocket-latent"``: the pocket latent diffusion prior (a small VAE + a U-Net on its 16×16×4 latents, 64×64
  images; ``pocket_latent``), shipped in ``text3d_edu/weights`` too (``POCKET_LDM_MODEL_CARD.md``), retrained by
  ``text3d-edu train-pocket-latent``;
- ``"openclip"`` / ``"stable-diffusion"``: pretrained OpenCLIP and Stable Diffusion (``real``), when their
  weights are in the Hugging Face cache (or downloadable).

    >>> clip = load_clip()                              # doctest: +SKIP
    >>> clip.similarity(images, ["a red mug"])          # (B_img, 1)
    >>> prior = load_diffusion()
    >>> images = prior.sample(["a red mug"], n=4, guidance=5.0, steps=50)   # (4, 3, 32, 32) in [0, 1]
"""

from __future__ import annotations

from text3d_edu.priors.base import Conditioning, DiffusionPrior, PromptCache, TextImagePrior

__all__ = ["Conditioning", "DiffusionPrior", "PromptCache", "TextImagePrior", "load_clip", "load_diffusion"]


def load_clip(backend: str = "pocket", **kwargs) -> TextImagePrior:
    """A text–image prior. backend: "pocket" (kwargs: weights_dir, device) or "openclip" (kwargs: model_name,
    pretrained, device)."""
    if backend == "pocket":
        from text3d_edu.priors.pocket_clip import load_pocket_clip

        return load_pocket_clip(**kwargs)
    if backend == "openclip":
        from text3d_edu.priors.real import load_openclip

        return load_openclip(**kwargs)
    raise ValueError(f"unknown CLIP backend {backend!r}; choose 'pocket' or 'openclip'")


def load_diffusion(backend: str = "pocket", **kwargs) -> DiffusionPrior:
    """A diffusion prior. backend: "pocket" (kwargs: weights_dir, device), "pocket-latent" (kwargs: weights_dir,
    clip_weights_dir, device) or "stable-diffusion" (kwargs: model_id, device)."""
    if backend == "pocket":
        from text3d_edu.priors.pocket_diffusion import load_pocket_diffusion

        return load_pocket_diffusion(**kwargs)
    if backend == "pocket-latent":
        from text3d_edu.priors.pocket_latent import load_pocket_latent

        return load_pocket_latent(**kwargs)
    if backend == "stable-diffusion":
        from text3d_edu.priors.real import load_stable_diffusion

        return load_stable_diffusion(**kwargs)
    raise ValueError(f"unknown diffusion backend {backend!r}; choose 'pocket', 'pocket-latent' or "
                     "'stable-diffusion'")
