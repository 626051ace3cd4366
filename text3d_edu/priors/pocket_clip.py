"""The pocket CLIP: open_clip's own ``CLIP`` class at a tiny size, trained on Pocket World renders.

It is the real architecture (Radford et al. 2021, https://arxiv.org/abs/2103.00020) — a ViT image tower, a
causal text transformer, both projected to D = 64 and compared by cosine similarity — with open_clip's BPE
tokenizer (it ships offline), shrunk to 32×32 images and 20-token captions. Training is CLIP's symmetric
contrastive (InfoNCE) loss, in ``text3d_edu.priors.train``.

The pocket diffusion model is conditioned on this CLIP's *text token features* (frozen), the way Stable
Diffusion is conditioned on the token features of OpenAI CLIP's text tower: ``text_features`` gives them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from text3d_edu.priors.clip import OpenCLIPPrior

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CLIP_WEIGHTS = "pocket_clip.safetensors"

IMAGE_SIZE = 32
CONTEXT_LENGTH = 20  # "a small red cube on top of a large blue cube, overhead view" is 16 tokens with SOT/EOT
POCKET_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXT_WIDTH = POCKET_CLIP_CONFIG["text_cfg"]["width"]  # D of the token features the UNet cross-attends to


def build_clip_model(seed: int = 0):
    """A randomly initialised pocket ``open_clip.CLIP`` (≈ 4 M parameters, 3.2 M of them the token table)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    cfg = POCKET_CLIP_CONFIG
    return open_clip.CLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]))


def build_tokenizer():
    """open_clip's BPE tokenizer (ships with open_clip: no download), at the pocket context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def text_features(model, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """The text tower, stopped before pooling: token ids (B, L) → token features (B, L, TEXT_WIDTH) after the
    final LayerNorm (what cross-attention reads) and the pooled, projected, unit-norm embedding (B, D)."""
    x = model.token_embedding(tokens) + model.positional_embedding  # (B, L, W)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))  # (B, L, W)
    pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection  # EOT has the max id
    return x, torch.nn.functional.normalize(pooled, dim=-1)


def load_clip_model(weights_dir: str | Path | None = None):
    """The trained pocket ``open_clip.CLIP`` from ``weights_dir`` (the package's weights by default), in eval."""
    from safetensors.torch import load_file

    path = Path(weights_dir or WEIGHTS_DIR) / CLIP_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"no pocket CLIP weights at {path}; train them with `text3d-edu train-pocket`")
    model = build_clip_model()
    state = {k: v.float() for k, v in load_file(path).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def load_pocket_clip(weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> OpenCLIPPrior:
    """The pocket CLIP behind the text–image prior interface (offline, from the shipped safetensors)."""
    from text3d_edu.toyworld import vocabulary

    return OpenCLIPPrior(load_clip_model(weights_dir), build_tokenizer(), IMAGE_SIZE,
                         vocabulary=vocabulary(), device=device)
