"""Does the pocket diffusion prior obey DreamFusion's view suffixes? Prints one JSON line.

For a prompt (default "a red mug"), bare and with each suffix of ``cameras.view_label`` (", front view", …),
``--n`` guided DDIM samples are drawn and the pocket CLIP picks, for each sample, the best of the four suffixed
captions. ``counts`` maps each prompt to how many samples were read as each view: the bare prompt should spread
over the views (it means "any view", which is how the Janus problem arises), each suffixed prompt should land on
its own view (the model card and lecture 06 quote these figures).

    python benchmarks/view_prompts.py [--prompt "a red mug"] [--n 8] [--guidance 5]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch

from text3d_edu.priors import load_clip, load_diffusion
from text3d_edu.priors.data import view_suffix

VIEWS = ("front", "side", "back", "overhead")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red mug")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clip, prior = load_clip("pocket"), load_diffusion("pocket")
    suffixed = [args.prompt + view_suffix(view) for view in VIEWS]
    counts, on_view = {}, {}
    for prompt, asked in [(args.prompt, None), *zip(suffixed, VIEWS)]:
        generator = torch.Generator().manual_seed(args.seed)
        samples = prior.sample([prompt], n=args.n, guidance=args.guidance, steps=args.steps, generator=generator)
        read = [VIEWS[i] for i in clip.classify(samples, suffixed).tolist()]
        counts[prompt] = dict(Counter(read))
        if asked is not None:
            on_view[asked] = read.count(asked) / args.n
    print(json.dumps({"prompt": args.prompt, "n": args.n, "guidance": args.guidance, "counts": counts,
                      "on_view": on_view}))


if __name__ == "__main__":
    main()
