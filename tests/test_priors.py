"""Tests of the priors: the interface, the shipped pocket weights (offline), the real-backend code path with tiny
random components of the real classes, fast offline failure, bad inputs, training, and quality on held-out data."""

from __future__ import annotations

import json
import math
import socket
import time
import warnings

import pytest
import torch

from text3d_edu.priors import Conditioning, load_clip, load_diffusion
from text3d_edu.priors import data as pocket_data
from text3d_edu.priors.clip import OpenCLIPPrior
from text3d_edu.toyworld import COLOURS, KINDS, catalogue_captions


@pytest.fixture(scope="module")
def priors():
    """The shipped pocket priors, loaded with the network cut off and HF_HUB_OFFLINE=1."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")

        def no_network(*args, **kwargs):
            raise AssertionError("the pocket priors must load without the network")

        mp.setattr(socket.socket, "connect", no_network)
        yield load_clip("pocket"), load_diffusion("pocket")


def judge(clip, images):
    """Kind and colour indices (B,), (B,) of the best catalogue caption ("a {colour} {kind}", kind-major)."""
    choice = clip.classify(images, catalogue_captions())
    return choice // len(COLOURS), choice % len(COLOURS)


# --- the interface ---------------------------------------------------------------------------------------------


def test_clip_shapes_normalised_and_differentiable(priors):
    clip, _ = priors
    text = clip.encode_text(["a red mug", "a blue car", "a red mug, back view"])
    assert text.shape == (3, 64) and torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    images = torch.rand(2, 3, 48, 48, requires_grad=True)  # another size: resized inside
    emb = clip.encode_image(images)
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    (-clip.similarity(images, ["a red mug"]).sum()).backward()  # the CLIP loss
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert clip.similarity(images.detach(), ["a red mug", "a blue car", "a duck"]).shape == (2, 3)


def test_diffusion_prompt_and_noise_shapes(priors):
    _, prior = priors
    cond = prior.encode_prompt(["a red mug", "a blue car"])
    assert cond.hidden_states.shape == (2, 20, 64) and cond.pooled.shape == (2, 64)
    assert len(prior.encode_unconditional(3)) == 3
    assert prior.alphas_cumprod.shape == (prior.num_train_timesteps,) == (1000,)
    x_t = torch.randn(2, 3, 32, 32, requires_grad=True)
    eps = prior.predict_noise(x_t, torch.tensor([10, 900]), cond)
    assert eps.shape == (2, 3, 32, 32)
    eps.square().sum().backward()  # SDS with the U-Net Jacobian backprops through ε_φ
    assert x_t.grad is not None and x_t.grad.abs().sum() > 0


def test_guided_noise_is_the_seeds_formula(priors):
    _, prior = priors
    x_t, t, omega = torch.randn(2, 3, 32, 32), 500, 7.0
    cond, uncond = prior.encode_prompt(["a red mug", "a green duck"]), prior.encode_unconditional(1)
    eps_y, eps_0 = prior.predict_noise(x_t, t, cond), prior.predict_noise(x_t, t, uncond)
    by_hand = (1 + omega) * eps_y - omega * eps_0
    guided = prior.guided_noise(x_t, t, cond, uncond, omega)
    assert torch.allclose(guided, by_hand, atol=1e-4)
    diffusers_form = eps_0 + (1 + omega) * (eps_y - eps_0)  # guidance_scale s = 1 + ω
    assert torch.allclose(guided, diffusers_form, atol=1e-4)
    assert torch.allclose(prior.guided_noise(x_t, t, cond, uncond, 0.0), eps_y, atol=1e-4)


def test_add_noise_matches_diffusers_and_round_trip(priors):
    from diffusers import DDPMScheduler

    _, prior = priors
    x_0, noise, t = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(3, 3, 32, 32), torch.tensor([0, 400, 999])
    reference = DDPMScheduler.from_config(prior.scheduler_config).add_noise(x_0, noise, t)
    assert torch.allclose(prior.add_noise(x_0, t, noise), reference, atol=1e-5)
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(prior.model_to_images(prior.images_to_model(images)), images, atol=1e-6)
    assert prior.images_to_model(torch.rand(2, 3, 64, 64)).shape == (2, 3, 32, 32)


def test_ddim_step_by_step_is_seeded(priors):
    _, prior = priors
    states = list(prior.iter_sample(["a red mug"], n=2, steps=4, generator=torch.Generator().manual_seed(3)))
    assert [s["step"] for s in states] == [0, 1, 2, 3] and states[0]["t"] > states[-1]["t"]
    assert states[-1]["x_t"].shape == states[-1]["x0_pred"].shape == (2, 3, 32, 32)
    again = prior.sample(["a red mug"], n=2, steps=4, generator=torch.Generator().manual_seed(3))
    assert again.shape == (2, 3, 32, 32) and again.min() >= 0 and again.max() <= 1
    assert torch.allclose(again, prior.model_to_images(states[-1]["x_t"]), atol=1e-5)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(priors):
    clip, prior = priors
    for bad in ([""], [], ["  "]):
        with pytest.raises(ValueError, match="prompt"):
            prior.encode_prompt(bad)
        with pytest.raises(ValueError, match="prompt"):
            clip.encode_text(bad)
    with pytest.raises(ValueError, match="list of prompts"):
        prior.encode_prompt("a red mug")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*permute"):
        clip.encode_image(torch.rand(2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        prior.predict_noise(torch.randn(2, 3, 16, 16), 10, prior.encode_prompt(["a red mug"]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        prior.predict_noise(torch.randn(1, 3, 32, 32), 1000, prior.encode_prompt(["a red mug"]))
    with pytest.raises(ValueError, match="rows"):
        prior.predict_noise(torch.randn(3, 3, 32, 32), 10, prior.encode_prompt(["a red mug", "a blue car"]))
    with pytest.raises(ValueError, match="backend"):
        load_clip("dall-e")


def test_unknown_words_warn_and_list_the_vocabulary(priors):
    clip, prior = priors
    with pytest.warns(UserWarning, match=r"dragon.*knows only.*mug"):
        prior.encode_prompt(["a purple dragon"])
    with pytest.warns(UserWarning, match="spaceship"):
        clip.encode_text(["a red spaceship"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every caption of the world is in the vocabulary, articles included
        prior.encode_prompt(catalogue_captions() + ["an orange duck, overhead view"])


# --- the real backends, with tiny random components of the real classes --------------------------------------------


def tiny_stable_diffusion(prediction_type: str = "epsilon"):
    """Stable Diffusion's component classes at toy size (diffusers' get_dummy_components() in spirit)."""
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from open_clip.tokenizer import SimpleTokenizer

    from text3d_edu.priors.real import StableDiffusionPrior

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=4)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=0))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              prediction_type=prediction_type)
    return StableDiffusionPrior(unet, vae, text_encoder, SimpleTokenizer(context_length=77), scheduler)


def test_stable_diffusion_path_with_tiny_components():
    prior = tiny_stable_diffusion()
    assert prior.model_shape == (4, 8, 8) and prior.image_size == 16
    cond, uncond = prior.encode_prompt(["a red mug"]), prior.encode_unconditional()
    assert cond.hidden_states.shape == (1, 77, 16)
    x_t = torch.randn(2, 4, 8, 8)
    eps_y, eps_0 = prior.predict_noise(x_t, 300, cond), prior.predict_noise(x_t, 300, uncond)
    assert torch.allclose(prior.guided_noise(x_t, 300, cond, uncond, 6.5), 7.5 * eps_y - 6.5 * eps_0, atol=1e-5)
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    latents = prior.images_to_model(images)  # resized to 16×16, VAE-encoded, scaled
    assert latents.shape == (2, 4, 8, 8)
    latents.sum().backward()  # latent SDS backprops through the encoder
    assert images.grad is not None
    assert prior.model_to_images(latents.detach()).shape == (2, 3, 16, 16)
    samples = prior.sample(["a red mug"], n=2, guidance=2.0, steps=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 16, 16) and torch.isfinite(samples).all()


def test_v_prediction_is_converted_to_epsilon():
    prior = tiny_stable_diffusion("v_prediction")
    x_t, cond = torch.randn(1, 4, 8, 8), prior.encode_prompt(["a red mug"])
    v = prior.unet(x_t, torch.tensor([700]), encoder_hidden_states=cond.hidden_states).sample
    a = prior.alphas_cumprod[700]
    assert torch.allclose(prior.predict_noise(x_t, 700, cond), a.sqrt() * v + (1 - a).sqrt() * x_t, atol=1e-5)
    assert prior.scheduler_config["prediction_type"] == "epsilon"  # the samplers receive ε


def test_openclip_path_with_a_tiny_model():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(0)
    model = open_clip.CLIP(16, CLIPVisionCfg(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
                           CLIPTextCfg(context_length=12, vocab_size=49408, width=16, heads=1, layers=1))
    clip = OpenCLIPPrior(model, SimpleTokenizer(context_length=12), image_size=16)
    scores = clip.similarity(torch.rand(3, 3, 40, 40), ["a photo of a dog", "a red mug"])
    assert scores.shape == (3, 2) and scores.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize("backend", ["openclip", "stable-diffusion"])
def test_offline_real_weights_fail_fast_with_instructions(backend, monkeypatch):
    from text3d_edu.priors.real import (
        DEFAULT_OPENCLIP,
        DEFAULT_STABLE_DIFFUSION,
        WeightsUnavailable,
        _cached,
        find_openclip_weights,
    )

    if find_openclip_weights(*DEFAULT_OPENCLIP) or _cached(DEFAULT_STABLE_DIFFUSION, "model_index.json"):
        pytest.skip("real weights are in the local cache: nothing to fail on")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match=r"not in the Hugging Face cache.*backend='pocket'"):
        (load_clip if backend == "openclip" else load_diffusion)(backend)
    assert time.perf_counter() - started < 10


def test_cli_says_what_is_missing(monkeypatch, capsys, tmp_path):
    from text3d_edu.cli import main
    from text3d_edu.priors.real import DEFAULT_STABLE_DIFFUSION, _cached

    if _cached(DEFAULT_STABLE_DIFFUSION, "model_index.json"):
        pytest.skip("Stable Diffusion is in the local cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["sample", "a red mug", "--backend", "stable-diffusion", "--out", str(tmp_path)]) == 2
    assert "huggingface-cli download" in capsys.readouterr().err


# --- command line, training ----------------------------------------------------------------------------------------


def test_cli_sample_and_similarity(tmp_path, capsys):
    from text3d_edu.cli import main

    assert main(["sample", "a red mug", "--n", "2", "--steps", "4", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "a_red_mug.png").exists()
    assert main(["similarity", "a red mug", "a blue car"]) == 0
    out = capsys.readouterr().out
    assert "render of 'a red mug'" in out and out.count("+") + out.count("-") >= 4


def test_training_runs_resumes_exactly_and_stops_on_nan(tmp_path):
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from text3d_edu.priors.train import STATS_FILE, TrainingDiverged, train_pocket, training_loop

    tiny = dict(clip_steps=2, unet_steps=4, n_objects=13, views_per_object=1, threads=1, heldout_objects=13,
                checkpoint_every=2)
    stats = train_pocket(tmp_path / "run", tmp_path / "weights", **tiny)
    assert {"pocket_clip.safetensors", "pocket_unet.safetensors", STATS_FILE} <= {
        p.name for p in (tmp_path / "weights").iterdir()}
    assert json.loads((tmp_path / "weights" / STATS_FILE).read_text())["unet_steps"] == stats["unet_steps"] == 4
    assert load_diffusion(weights_dir=tmp_path / "weights").encode_prompt(["a red mug"]).pooled.shape == (1, 64)
    # --resume: the CLIP is reloaded, the U-Net continues from its step-2 checkpoint and ends on the same weights
    train_pocket(tmp_path / "run", tmp_path / "resumed", resume=True, **tiny)
    first, resumed = (load_file(tmp_path / d / "pocket_unet.safetensors") for d in ("weights", "resumed"))
    assert all(torch.equal(first[k], resumed[k]) for k in first)

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(TrainingDiverged, match="NaN|nan"):
        training_loop("toy", 9, Accelerator(), model, optimizer, schedule, 3,
              lambda m, g: m(torch.full((1, 2), math.nan)).sum(), tmp_path, 0, False, 100)


def test_captions_mix_forms_and_view_suffixes():
    data = {"caption": ["a tall red mug"] * 200, "short_caption": ["a red mug"] * 200, "view": ["back"] * 200}
    captions = pocket_data.sample_captions(data, torch.arange(200), torch.Generator().manual_seed(0),
                                           drop_probability=0.1)
    assert set(captions) == {"", "a tall red mug", "a red mug", "a tall red mug, back view", "a red mug, back view"}
    assert 0.3 < sum(c.endswith("view") for c in captions) / len(captions) < 0.6
    assert 0.03 < captions.count("") / len(captions) < 0.2


# --- quality: held-out renders and samples that an untrained model would fail --------------------------------------


def test_pocket_clip_zero_shot_on_held_out_renders(priors):
    from text3d_edu.priors.pocket_clip import build_clip_model, build_tokenizer

    clip, _ = priors
    held = pocket_data.render_dataset(len(KINDS) * 5, 2, seed=7, held_out=True)  # 130 unseen renders
    kind, colour = judge(clip, held["images"].float() / 255)
    assert (kind == held["kind"]).float().mean() >= 0.85
    assert (colour == held["colour"]).float().mean() >= 0.9
    untrained = OpenCLIPPrior(build_clip_model(seed=1), build_tokenizer(), 32)
    kind, colour = judge(untrained, held["images"].float() / 255)
    assert (kind == held["kind"]).float().mean() < 0.4 and (colour == held["colour"]).float().mean() < 0.4


def test_pocket_diffusion_samples_are_what_the_prompt_says(priors):
    clip, prior = priors
    prompts = [("a red table", 0, 0), ("a blue rocket", 8, 4), ("a yellow duck", 11, 2), ("a green car", 9, 3)]
    samples = prior.sample([p for p, _, _ in prompts], n=4, guidance=5.0, steps=25,
                           generator=torch.Generator().manual_seed(0))
    kind, colour = judge(clip, samples)
    assert (kind == torch.tensor([k for _, k, _ in prompts]).repeat_interleave(4)).float().mean() >= 0.75
    assert (colour == torch.tensor([c for _, _, c in prompts]).repeat_interleave(4)).float().mean() >= 0.75


def test_conditioning_broadcasts():
    cond = Conditioning(torch.zeros(1, 5, 4), torch.zeros(1, 4))
    assert len(cond.expand(3)) == 3 and len(cond.repeat_interleave(2)) == 2
    with pytest.raises(ValueError, match="rows"):
        Conditioning(torch.zeros(2, 5, 4)).expand(3)


def test_prompt_cache_encodes_each_prompt_once_and_keeps_the_order():
    from text3d_edu.priors import PromptCache

    class CountingPrior:
        def __init__(self):
            self.calls = []

        def encode_prompt(self, prompts):
            self.calls += prompts
            size = float(len(prompts[0]))
            return Conditioning(torch.full((1, 2, 3), size), torch.full((1, 3), size))

    prior = CountingPrior()
    cache = PromptCache(prior)
    cond = cache(["a red mug, front view", "a red mug", "a red mug, front view"])
    cache(["a red mug"])
    assert sorted(prior.calls) == ["a red mug", "a red mug, front view"]
    assert cond.hidden_states[:, 0, 0].tolist() == [21.0, 9.0, 21.0]
    assert cond.pooled.shape == (3, 3)


def test_training_commands_record_their_flags_and_stop_with_a_message_on_divergence(capsys):
    import argparse

    from text3d_edu import cli
    from text3d_edu.priors.train import TrainingDiverged

    args = argparse.Namespace(out="runs/x", weights_dir=None, seed=3, resume=True, threads=1, workers=2,
                              clip_steps=5, unet_steps=7)
    seen = {}

    def train(out, weights_dir, **kwargs):
        seen.update(out=out, **kwargs)
        return {"minutes": {"total": 0.1}}

    assert cli._train(args, "train-pocket", train, ["clip_steps", "unet_steps", "seed"], clip_steps=5) is not None
    assert seen["command"] == "text3d-edu train-pocket --clip-steps 5 --unet-steps 7 --seed 3"
    assert (seen["out"], seen["resume"], seen["workers"], seen["clip_steps"]) == ("runs/x", True, 2, 5)

    def diverge(*args, **kwargs):
        raise TrainingDiverged("the loss is nan at step 4")

    assert cli._train(args, "train-pocket", diverge, []) is None
    assert "text3d-edu train-pocket: stopped: the loss is nan at step 4" in capsys.readouterr().err
