"""Point-E (Nichol et al. 2022): text → a synthetic view → a coloured point cloud (base model + upsampler).

- ``model``: the transformer denoiser over point tokens, with the timestep and the image's CLIP features as
  prepended tokens (and, for the upsampler, the coarse cloud);
- ``diffusion``: the cosine-schedule Gaussian diffusion, its training loss and the guided DDIM sampler;
- ``data``: surface clouds of Pocket World objects paired with renders of the same objects;
- ``train``: training both denoisers (``text3d-edu train-pointe``) and loading their weights.
"""
