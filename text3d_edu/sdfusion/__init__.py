"""SDFusion (Cheng, Lee, Tulyakov, Schwing, Gui: "SDFusion: Multimodal 3D Shape Completion, Reconstruction, and
Generation", CVPR 2023, https://arxiv.org/abs/2212.04493) on the Pocket World: a 3DPT method (trained on 3D data
with paired text) that diffuses in the latent space of a 3D VQ-VAE of SDF grids.

- ``data``: 32³ truncated SDF grids with captions, render features and half-shapes; the kind judge;
- ``vqvae``: the 3D VQ-VAE (encoder, codebook with the straight-through estimator and commitment loss, decoder);
- ``unet``: the 3D latent U-Net ε_θ(z_t, t, c) with text, image and partial-shape conditions;
- ``sampler``: DDIM with the multi-modal classifier-free guidance, and with a known region (completion);
- ``pipeline``: text / image / half-shape → shape, the measured figures, ``text3d-edu generate --method sdfusion``;
- ``train``: ``text3d-edu train-sdfusion`` (the VQ-VAE, then the U-Net) and loading the weights.
"""
