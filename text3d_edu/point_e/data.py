"""Point-E's training pairs, from the Pocket World: a surface cloud of each object and renders of the same object.

Point-E trains on ~1M 3D models, each rendered from 20 random views (Blender) and converted to a 4096-point cloud
whose colours come from those renders; the conditioning image of a training example is one of the renders.
Here the objects are those of the pocket priors' data set (``priors.data.dataset_object``: balanced kinds ×
colours, random forms and jitter), the renders are its 32×32 views (``priors.data.render_dataset``, the images
the pocket CLIP was trained on), and the cloud comes from the object's signed distance function
(``world_render.surface_points``: points on the surface) with each point's albedo, the colour the object *is*
(Point-E takes colours from its lit renders; ours are what every other method's unlit field learns to show, and
what ``fidelity``'s colour error compares with).

The conditioning is the frozen pocket CLIP's image embedding f_I of one view, precomputed once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from text3d_edu.point_e.diffusion import to_model
from text3d_edu.priors import data as pocket_data
from text3d_edu.world_render import surface_points


def cloud_dataset(n_objects: int, views_per_object: int = 4, points: int = 1024, seed: int = 0,
                  held_out: bool = False, clip=None, cache_dir: str | Path | None = None, workers: int = 1,
                  progress: bool = False) -> dict:
    """Point-E's pairs for ``n_objects`` objects.

    Returns {"clouds": (N, points, 6) in the model's units (``diffusion.to_model``), "features": (N, V, E) the
    pocket CLIP's image embeddings of V = ``views_per_object`` renders of each object, "images": uint8
    (N, V, 3, 32, 32), "caption": list[str] (N,) short captions, "kind" / "colour": long (N,)}. Deterministic in
    (n_objects, views_per_object, points, seed, held_out); cached as a .pt file in ``cache_dir``.
    """
    name = (f"pointe_{'heldout' if held_out else 'train'}_{n_objects}x{views_per_object}_p{points}_s{seed}"
            f"_v{pocket_data.DATA_VERSION}.pt")
    if cache_dir is not None and (Path(cache_dir) / name).exists():
        return torch.load(Path(cache_dir) / name)
    if clip is None:
        from text3d_edu.priors import load_clip

        clip = load_clip("pocket")
    renders = pocket_data.render_dataset(n_objects, views_per_object, seed, held_out, cache_dir, progress, workers)
    offset = pocket_data.dataset_offset(seed, held_out)
    clouds = []
    for i in tqdm(range(n_objects), desc="surface clouds", mininterval=10, disable=not progress):
        obj = pocket_data.dataset_object(i, offset)
        xyz, _ = surface_points(obj, points, seed=offset + i)  # (points, 3); its shaded colours are not used
        clouds.append(to_model(xyz, obj.albedo(xyz)))  # (points, 6)
    images = renders["images"]  # (N·V, 3, 32, 32) uint8, object-major
    with torch.no_grad():
        features = torch.cat([clip.encode_image(chunk.float() / 255) for chunk in images.split(512)])  # (N·V, E)
    data = {"clouds": torch.stack(clouds), "features": features.reshape(n_objects, views_per_object, -1),
            "images": images.reshape(n_objects, views_per_object, *images.shape[1:]),
            "caption": renders["short_caption"][::views_per_object],
            "kind": renders["kind"][::views_per_object], "colour": renders["colour"][::views_per_object]}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        torch.save(data, Path(cache_dir) / name)
    return data
