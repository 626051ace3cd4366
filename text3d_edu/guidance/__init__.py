"""2D guidance for 3D generation: each module turns a rendered image and a prompt into a loss whose gradient is
the method's gradient. They know nothing about fields or renderers, and talk to priors through
``text3d_edu.priors``' interface, so the same code runs on the pocket priors and on OpenCLIP / Stable Diffusion.

- ``clip_loss``: Dream Fields (Jain et al., CVPR 2022) and DietNeRF's semantic consistency.
- ``sds``: DreamFusion's Score Distillation Sampling (Poole et al., ICLR 2023), with or without the U-Net Jacobian.
- ``vsd``: ProlificDreamer's Variational Score Distillation (Wang et al., NeurIPS 2023): n particles and a LoRA ε_φ
  of the rendered images' score.
- ``view_prompts``: DreamFusion's view-dependent prompts, against the Janus problem.
"""
