"""Benchmark of the pocket priors: prints one JSON line.

- clip_kind_acc / clip_colour_acc: pocket CLIP zero-shot on held-out renders (objects and views never used in
  training), choosing among catalogue_captions() ("a {colour} {kind}", 13 × 10): the argmax gives kind and colour.
- diffusion_kind_acc / diffusion_colour_acc: ``--prompts`` prompts (every kind, two colours each) × ``--n``
  guided DDIM samples, judged by the pocket CLIP the same way. Chance is 1/13 and 1/10.
- sample_seconds: one image, 50 DDIM steps with classifier-free guidance (two U-Net rows per step), median of 3.
- train_minutes: read from weights/pocket_priors.json, written by ``text3d-edu train-pocket``.

``--backend pocket-latent`` judges the pocket *latent* prior's 64×64 samples instead (the CLIP resizes them to its
32×32), times its 50-step samples, and adds the held-out VAE reconstruction PSNR and training minutes from
pocket_latent.json (``text3d-edu train-pocket-latent``; ``--latent-weights-dir`` where it wrote them).

    python benchmarks/priors.py [--grid outputs/priors_grid.png] [--threads 1] [--device cuda]
                                [--backend pocket-latent --latent-weights-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch

from text3d_edu.priors import data as pocket_data
from text3d_edu.priors.pocket_clip import WEIGHTS_DIR, load_pocket_clip
from text3d_edu.priors.pocket_diffusion import load_pocket_diffusion
from text3d_edu.priors.pocket_latent import load_pocket_latent
from text3d_edu.priors.train import STATS_FILE
from text3d_edu.priors.train_latent import STATS_FILE as LATENT_STATS_FILE
from text3d_edu.toyworld import COLOURS, KINDS, catalogue_captions, with_article


def benchmark_prompts(count: int) -> list[tuple[str, int, int]]:
    """``count`` (prompt, kind index, colour index): kinds in turn, colours spread so every colour appears."""
    kinds, colours = list(KINDS), list(COLOURS)
    out = []
    for i in range(count):
        k, c = i % len(kinds), (3 * i + 5 * (i // len(kinds))) % len(colours)  # a kind's colours differ
        out.append((with_article(f"{colours[c]} {kinds[k]}"), k, c))
    return out


def judge(clip, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) → predicted kind and colour indices (B,), (B,) from the best catalogue caption."""
    choice = clip.classify(images, catalogue_captions()).cpu()  # catalogue_captions() is kind-major
    return choice // len(COLOURS), choice % len(COLOURS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--prompts", type=int, default=26)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="1: on a shared 2-core machine 2 threads ran 10× slower")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the held-out set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", default=None, help="write a PNG grid of the samples (one row per prompt)")
    parser.add_argument("--backend", choices=["pocket", "pocket-latent"], default="pocket",
                        help="the diffusion prior to judge (the CLIP is always the pocket CLIP)")
    parser.add_argument("--latent-weights-dir", default=None, help="the pocket LDM's weights (default: the package's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_pocket_clip(args.weights_dir, device=args.device)
    if args.backend == "pocket":
        prior = load_pocket_diffusion(args.weights_dir, device=args.device)
    else:
        prior = load_pocket_latent(args.latent_weights_dir, clip_weights_dir=args.weights_dir, device=args.device)

    held = pocket_data.render_dataset(2 * len(KINDS) * len(COLOURS), 2, seed=1, held_out=True,
                                      workers=args.workers)
    kind, colour = judge(clip, held["images"].float() / 255)
    result = {"clip_kind_acc": (kind == held["kind"]).float().mean().item(),
              "clip_colour_acc": (colour == held["colour"]).float().mean().item(),
              "clip_heldout_images": len(kind)}

    prompts = benchmark_prompts(args.prompts)
    generator = torch.Generator().manual_seed(0)
    samples = prior.sample([p for p, _, _ in prompts], n=args.n, guidance=args.guidance, steps=args.steps,
                           generator=generator)  # (P·n, 3, 32, 32), prompt-major
    kind, colour = judge(clip, samples)
    true_kind = torch.tensor([k for _, k, _ in prompts]).repeat_interleave(args.n)
    true_colour = torch.tensor([c for _, _, c in prompts]).repeat_interleave(args.n)
    result.update(diffusion_kind_acc=(kind == true_kind).float().mean().item(),
                  diffusion_colour_acc=(colour == true_colour).float().mean().item(),
                  diffusion_samples=len(kind), guidance=args.guidance, steps=args.steps)
    if args.grid:
        from torchvision.utils import save_image

        save_image(samples.cpu(), args.grid, nrow=args.n, padding=1)

    times = []
    for _ in range(3):
        started = time.perf_counter()
        prior.sample(["a red mug"], n=1, guidance=args.guidance, steps=50, generator=generator)
        times.append(time.perf_counter() - started)
    result["sample_seconds"] = statistics.median(times)
    result["sample_device"] = args.device
    result["backend"] = args.backend
    if args.backend == "pocket":
        stats = json.loads((Path(args.weights_dir or WEIGHTS_DIR) / STATS_FILE).read_text())
    else:
        stats = json.loads((Path(args.latent_weights_dir or WEIGHTS_DIR) / LATENT_STATS_FILE).read_text())
        result["vae_psnr_heldout"] = stats["vae_psnr_heldout"]
    result["train_minutes"] = stats["minutes"]["total"]
    result["train_device"] = stats.get("device")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
