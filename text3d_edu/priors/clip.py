"""A CLIP prior around any ``open_clip`` model: the pocket CLIP and pretrained OpenCLIP share this class.

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) embeds an image and a caption into one space;
the similarity of a pair is the cosine of their unit embeddings, φ(I)ᵀψ(y). Dream Fields' CLIP loss
(lecture: L = −φ(I)ᵀψ(y)) backprops through ``encode_image`` into the rendered image.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from text3d_edu.priors.base import TextImagePrior, check_images, check_prompts, resize

# open_clip's (and OpenAI CLIP's) image normalisation
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def unknown_words(prompt: str, vocabulary: set[str]) -> list[str]:
    """Words of ``prompt`` (lower-cased, punctuation stripped) that are not in ``vocabulary``."""
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    return [w for w in words if w not in vocabulary]


def warn_unknown_words(prompts: list[str], vocabulary: set[str] | None) -> None:
    """A pocket model never saw words outside its world: warn (not fail) and list what it knows."""
    if vocabulary is None:
        return
    unknown = sorted({w for p in prompts for w in unknown_words(p, vocabulary)})
    if unknown:
        warnings.warn(f"the pocket prior never saw the words {unknown}; it knows only the Pocket World's "
                      f"vocabulary: {', '.join(sorted(vocabulary))}", stacklevel=3)


class OpenCLIPPrior(TextImagePrior):
    """An open_clip ``CLIP`` model behind the text–image prior interface.

    model: an ``open_clip.CLIP`` (or CustomTextCLIP); tokenizer: open_clip tokenizer, list[str] → (B, L) ids;
    image_size: the vision tower's input size; mean, std: its normalisation; vocabulary: if given, prompts with
    other words raise a warning (the pocket backend).
    """

    def __init__(self, model, tokenizer, image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD,
                 vocabulary: set[str] | None = None, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).reshape(1, 3, 1, 1)
        self.vocabulary = vocabulary

    def tokenize(self, texts: list[str]) -> Tensor:
        """Captions (B,) → token ids (B, L), L = the text tower's context length."""
        texts = check_prompts(texts)
        warn_unknown_words(texts, self.vocabulary)
        return self.tokenizer(texts).to(self.device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Captions (B,) → unit-norm embeddings ψ(y) (B, D)."""
        return F.normalize(self.model.encode_text(self.tokenize(texts)).float(), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1], any H, W → unit-norm embeddings φ(I) (B, D); differentiable."""
        images = resize(check_images(images).to(self.device), self.image_size)
        return F.normalize(self.model.encode_image((images - self.mean) / self.std).float(), dim=-1)

    @torch.no_grad()
    def classify(self, images: Tensor, texts: list[str]) -> Tensor:
        """Zero-shot classification: the index (B_img,) of the best-matching caption for each image."""
        return self.similarity(images, texts).argmax(dim=-1)
