"""The real-weights path in half precision (issue 9, item 4), and the guidance ω that ``generate`` picks per backend.

``load_stable_diffusion(dtype=...)`` reads a tiny pipeline of Stable Diffusion's component classes saved with
``save_pretrained`` (offline), and is used as threestudio's ``StableDiffusionGuidance`` uses half-precision
weights: images, x_T and latents are cast to the VAE's / U-Net's dtype at the call, and the outputs (latents, ε,
images) come back in float32, so the SDS gradient reaches the float32 3D field in float32.

float16 convolutions and matmuls run on CPU in this torch, so float16 itself is tested; bfloat16 too, since the
code reads the dtype from the modules rather than assuming float16.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_priors import tiny_stable_diffusion

from text3d_edu.guidance.sds import SDSConfig, sds_loss
from text3d_edu.priors.real import load_stable_diffusion

HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> str:
    """The tiny components of ``tiny_stable_diffusion`` saved as a Stable Diffusion pipeline folder, with a
    CLIPTokenizer on a toy vocabulary (words outside it become <|endoftext|>)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_sd")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "red</w>": 3, "mug</w>": 4}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: words are whole-word tokens or unknown
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    tiny = tiny_stable_diffusion()
    scheduler = DDPMScheduler.from_config(tiny.scheduler_config)
    pipe = StableDiffusionPipeline(tiny.vae, tiny.text_encoder, tokenizer, tiny.unet, scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline")
    return str(folder / "pipeline")


@pytest.fixture(scope="module")
def full(pipeline_dir):
    """The same pipeline in float32: the reference."""
    return load_stable_diffusion(pipeline_dir)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_loads_encodes_and_samples(dtype, pipeline_dir, full):
    prior = load_stable_diffusion(pipeline_dir, dtype=dtype)
    assert prior.unet.dtype == prior.vae.dtype == prior.text_encoder.dtype == dtype
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)).requires_grad_()
    latents = prior.images_to_model(images)  # float32 images → VAE in `dtype` → float32 latents (2, 4, 8, 8)
    assert latents.dtype == torch.float32 and latents.shape == (2, 4, 8, 8)
    assert torch.allclose(latents, full.images_to_model(images), atol=0.05)
    latents.sum().backward()  # latent SDS backprops through the half-precision encoder
    assert images.grad.dtype == torch.float32 and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    cond = prior.encode_prompt(["a red mug"])
    eps = prior.predict_noise(latents.detach(), 300, cond)
    assert eps.dtype == torch.float32 and torch.allclose(eps, full.predict_noise(latents.detach(), 300, cond),
                                                         atol=0.05)
    samples = prior.sample(["a red mug"], n=2, guidance=2.0, steps=3, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.float32 and samples.shape == (2, 3, 16, 16)
    assert torch.isfinite(samples).all() and samples.min() >= 0 and samples.max() <= 1
    reference = full.sample(["a red mug"], n=2, guidance=2.0, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(samples, reference, atol=0.05)


@pytest.mark.parametrize("unet_jacobian", [False, True])
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_sds_step_reaches_a_float32_field(dtype, unet_jacobian, pipeline_dir, full):
    prior = load_stable_diffusion(pipeline_dir, dtype=dtype)
    cond, uncond = prior.encode_prompt(["a red mug"]), prior.encode_unconditional()
    field = torch.nn.Parameter(torch.zeros(2, 3, 16, 16))  # stands in for θ: renders x = g(θ) = sigmoid(θ)
    optimizer = torch.optim.Adam([field], lr=0.01)
    # ω = 5: at ω = 30, bfloat16's 8-bit mantissa times 31 leaves this random U-Net's Jacobian mostly rounding noise
    config = SDSConfig(guidance=5.0, unet_jacobian=unet_jacobian)
    loss, info = sds_loss(prior, torch.sigmoid(field), cond, uncond, config, torch.Generator().manual_seed(0))
    assert loss.dtype == info["grad"].dtype == torch.float32
    loss.backward()
    assert field.grad.dtype == torch.float32 and torch.isfinite(field.grad).all() and field.grad.abs().sum() > 0
    reference = torch.nn.Parameter(torch.zeros(2, 3, 16, 16))  # the same step with the float32 weights
    sds_loss(full, torch.sigmoid(reference), cond, uncond, config, torch.Generator().manual_seed(0))[0].backward()
    assert torch.cosine_similarity(field.grad.flatten(), reference.grad.flatten(), dim=0) > 0.99
    optimizer.step()
    assert field.dtype == torch.float32 and torch.isfinite(field).all() and field.abs().sum() > 0


def test_float32_path_casts_nothing(full):
    """With float32 weights the casts are no-ops: the numbers are those of the components called directly."""
    images, x_t = torch.rand(2, 3, 16, 16), torch.randn(2, 4, 8, 8)
    cond = full.encode_prompt(["a red mug"])
    scale = full.vae.config.scaling_factor
    assert torch.equal(full.images_to_model(images), full.vae.encode(images * 2 - 1).latent_dist.mean * scale)
    unet = full.unet(x_t, torch.tensor([300, 300]), encoder_hidden_states=cond.expand(2).hidden_states).sample
    assert torch.equal(full.predict_noise(x_t, 300, cond), unet)
    assert torch.equal(full.model_to_images(x_t), ((full.vae.decode(x_t / scale).sample + 1) / 2).clamp(0, 1))


# --- the ω that `text3d-edu generate` uses ----------------------------------------------------------------------


def test_generate_guidance_is_the_backends_unless_given():
    from text3d_edu.cli import generate_guidance

    assert generate_guidance("stable-diffusion") == 100.0  # DreamFusion's ω
    assert generate_guidance("pocket") == 30.0  # the pocket prior's
    assert generate_guidance("stable-diffusion", 7.5) == 7.5 and generate_guidance("pocket", 0.0) == 0.0


@pytest.mark.parametrize(("argv", "omega"), [(["--backend", "stable-diffusion"], 100.0), ([], 30.0),
                                             (["--backend", "stable-diffusion", "--guidance", "20"], 20.0)])
def test_generate_command_passes_the_resolved_guidance(argv, omega, generate_config_of):
    assert generate_config_of(["a red mug", *argv]).sds.guidance == omega
