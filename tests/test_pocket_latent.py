"""The pocket latent diffusion prior (``priors.pocket_latent``) and its training (``priors.train_latent``), on tiny
components: a 16×16 ↔ 4×4×4 VAE, a two-level latent U-Net, a randomly initialised pocket CLIP."""

from __future__ import annotations

import pytest
import torch

from text3d_edu.priors import load_diffusion, pocket_clip, pocket_latent
from text3d_edu.priors import train_latent as tl


def tiny_vae(seed: int = 0):
    return pocket_latent.build_vae(4, seed, image_size=16, width=8)  # (3, 16, 16) ↔ (4, 4, 4)


def tiny_unet(seed: int = 0):
    return pocket_latent.build_latent_unet(4, seed, width=16)  # 4×4 → 2×2


@pytest.fixture(scope="module")
def clip_model():
    return pocket_clip.build_clip_model(0)


@pytest.fixture()
def prior(clip_model):
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=2.0)
    return pocket_latent.PocketLatentDiffusion(tiny_unet(), vae, clip_model)


def tiny_images(n: int = 24, size: int = 16) -> torch.Tensor:
    """uint8 (n, 3, size, size): a coloured square on a grey background, colour and place varying."""
    g = torch.Generator().manual_seed(0)
    images = torch.full((n, 3, size, size), 160, dtype=torch.uint8)
    for i in range(n):
        colour = (torch.rand(3, generator=g) * 255).to(torch.uint8)
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        images[i, :, y:y + size // 2, x:x + size // 2] = colour[:, None, None]
    return images


def test_configs_shapes_and_bad_sizes():
    assert pocket_latent.vae_config(16)["block_out_channels"] == (16, 32, 32)  # 64 → 32 → 16
    assert len(pocket_latent.vae_config(8)["block_out_channels"]) == 4  # 64 → 32 → 16 → 8
    for bad in (12, 0, 128):
        with pytest.raises(ValueError, match="latent_size"):
            pocket_latent.vae_config(bad)
    assert len(pocket_latent.latent_unet_config(16)["down_block_types"]) == 3
    assert len(pocket_latent.latent_unet_config(8)["down_block_types"]) == 2


def test_vae_round_trip_shapes_and_scaling_factor():
    vae = tiny_vae().eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        z1 = pocket_latent.encode(vae, images)  # s = 1
        vae.register_to_config(scaling_factor=2.5)
        z = pocket_latent.encode(vae, images)
        back = pocket_latent.decode(vae, z)
        back_unscaled = (vae.decode(z1).sample + 1) / 2
    assert z.shape == (2, 4, 4, 4)
    assert torch.allclose(z, 2.5 * z1, atol=1e-6)  # z_0 = s·μ
    assert back.shape == (2, 3, 16, 16) and 0 <= back.min() and back.max() <= 1
    assert torch.allclose(back, back_unscaled.clamp(0, 1), atol=1e-5)  # decode divides s out again


def test_prior_satisfies_the_interface(prior):
    assert prior.model_shape == (4, 4, 4) and prior.image_size == 16
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    z_0 = prior.images_to_model(images)  # resized to 16², encoded, × s
    assert z_0.shape == (2, 4, 4, 4)
    z_0.square().sum().backward()  # latent SDS backprops through the encoder
    assert images.grad is not None and images.grad.abs().sum() > 0
    out = prior.model_to_images(z_0.detach())
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1

    noise = torch.randn_like(z_0)
    assert torch.allclose(prior.add_noise(z_0.detach(), 0, noise), z_0.detach(), atol=0.05)  # ᾱ_0 ≈ 1, √(1−ᾱ_0) = 0.01
    a = prior.alphas_cumprod[500]
    assert torch.allclose(prior.add_noise(z_0.detach(), 500, noise), a.sqrt() * z_0.detach() + (1 - a).sqrt() * noise,
                          atol=1e-6)

    cond, uncond = prior.encode_prompt(["a red mug"]), prior.encode_unconditional()
    x_t = torch.randn(2, 4, 4, 4)
    eps_y, eps_0 = prior.predict_noise(x_t, 300, cond), prior.predict_noise(x_t, 300, uncond)
    assert eps_y.shape == (2, 4, 4, 4) and not torch.allclose(eps_y, eps_0)  # the text reaches the U-Net
    assert torch.allclose(prior.guided_noise(x_t, 300, cond, uncond, 4.0), 5 * eps_y - 4 * eps_0, atol=1e-5)

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    samples = prior.sample(["a red mug"], n=2, guidance=3.0, steps=3, generator=g())
    assert samples.shape == (2, 3, 16, 16) and 0 <= samples.min() and samples.max() <= 1
    assert torch.equal(samples, prior.sample(["a red mug"], n=2, guidance=3.0, steps=3, generator=g()))


def test_sds_runs_unchanged_on_the_latent_prior(prior):
    from text3d_edu.guidance.sds import SDSConfig, sds_loss

    images = torch.rand(1, 3, 16, 16, requires_grad=True)
    loss, info = sds_loss(prior, images, prior.encode_prompt(["a red mug"]), prior.encode_unconditional(),
                          SDSConfig(guidance=10.0), torch.Generator().manual_seed(0))
    loss.backward()
    assert info["grad"].shape == (1, 4, 4, 4)
    assert images.grad.shape == (1, 3, 16, 16) and images.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors(prior, clip_model):
    with pytest.raises(ValueError, match=r"\(B, 4, 4, 4\)"):
        prior.predict_noise(torch.randn(1, 3, 16, 16), 10, prior.encode_unconditional())  # pixels, not latents
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        prior.images_to_model(torch.rand(1, 16, 16, 3))
    with pytest.raises(ValueError, match="empty prompt"):
        prior.encode_prompt([""])
    with pytest.raises(ValueError, match="U-Net was built for"):
        pocket_latent.PocketLatentDiffusion(pocket_latent.build_latent_unet(8, width=16), tiny_vae(), clip_model)


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="text3d-edu train-pocket-latent"):
        load_diffusion("pocket-latent", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="pocket-latent"):
        load_diffusion("pocket-latnet")


def test_saved_weights_load_with_their_scaling_factor(tmp_path):
    from text3d_edu.priors.train import save_weights

    vae = tiny_vae().eval()
    vae.register_to_config(scaling_factor=0.7)
    save_weights(vae, tmp_path / pocket_latent.VAE_WEIGHTS, dict(vae.config))
    loaded = pocket_latent.load_vae(tmp_path).eval()
    assert loaded.config.scaling_factor == 0.7 and loaded.config.sample_size == 16
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pocket_latent.encode(loaded, x), pocket_latent.encode(vae, x), atol=5e-3)  # float16


def test_vae_training_lowers_the_loss_and_sets_the_scaling_factor(tmp_path):
    images = tiny_images()
    vae = tiny_vae()
    x = images.float() / 255

    def loss():
        with torch.no_grad():
            return tl.vae_loss(vae.eval(), x, torch.Generator().manual_seed(1))["loss"].item()

    before = loss()
    trained, _ = tl.train_vae(images, 30, 0, tmp_path, False, batch_size=8, lr=3e-3, checkpoint_every=1000, vae=vae)
    assert trained is vae
    assert loss() < 0.7 * before
    s = trained.config.scaling_factor
    with torch.no_grad():
        z = tl.encode_dataset(trained, images)  # s·μ: unit variance over the training images
    assert s != 1.0 and abs(z.std().item() - 1) < 1e-3
    assert tl.reconstruction_psnr(trained, images) > 10


def test_latent_unet_training_lowers_the_loss(tmp_path, clip_model):
    images = tiny_images(16)
    data = {"caption": ["a tall red mug"] * 8 + ["a blue duck"] * 8, "short_caption": ["a red mug"] * 8
            + ["a blue duck"] * 8, "view": ["front"] * 16}
    latents = torch.randn(16, 4, 4, 4) * 0.3 + torch.arange(16.0).reshape(16, 1, 1, 1) / 16
    unet = tiny_unet()
    alphas = pocket_latent.build_scheduler().alphas_cumprod
    tokens = pocket_clip.build_tokenizer()(data["caption"])
    hidden, pooled = pocket_clip.text_features(clip_model.eval(), tokens)
    g = torch.Generator().manual_seed(3)
    noise, t = torch.randn(4, 16, 4, 4, 4, generator=g), torch.randint(0, 1000, (4, 16), generator=g)

    def loss():
        total = 0.0
        with torch.no_grad():
            for eps, tt in zip(noise, t):
                a = alphas[tt].reshape(-1, 1, 1, 1)
                pred = unet.eval()(a.sqrt() * latents + (1 - a).sqrt() * eps, tt, encoder_hidden_states=hidden,
                                   class_labels=pooled).sample
                total += torch.nn.functional.mse_loss(pred, eps).item()
        return total / len(noise)

    before = loss()
    trained, _ = tl.train_latent_unet(data, latents, clip_model, 40, 0, tmp_path, False, batch_size=16, lr=2e-3,
                                      ema_decay=0.5, checkpoint_every=1000, unet=unet)
    assert trained is unet and images.shape[0] == latents.shape[0]
    assert loss() < 0.8 * before


def test_resume_continues_from_the_checkpoint(tmp_path, capsys):
    images = tiny_images(8)
    straight, _ = tl.train_vae(images, 6, 0, tmp_path / "a", False, batch_size=4, checkpoint_every=3, vae=tiny_vae())
    assert (tmp_path / "a" / "checkpoints" / "vae-000003").exists()
    capsys.readouterr()
    resumed, _ = tl.train_vae(images, 6, 0, tmp_path / "a", True, batch_size=4, checkpoint_every=3,
                              vae=tiny_vae(seed=1))  # other initial weights: the checkpoint must replace them
    assert "resumed from" in capsys.readouterr().out
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name  # steps 3–5 replayed exactly on the restored state


def test_cli_flags():
    from text3d_edu.cli import build_parser

    args = build_parser().parse_args(["train-pocket-latent", "--vae-steps", "5", "--latent-unet-steps", "7",
                                      "--latent-size", "8", "--resume"])
    assert (args.vae_steps, args.latent_unet_steps, args.latent_size, args.resume) == (5, 7, 8, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-pocket-latent", "--latent-size", "12"])


def test_render_dataset_at_64():
    from text3d_edu.priors import data as pocket_data

    data = pocket_data.render_dataset(1, 1, seed=0, resolution=64)
    assert data["images"].shape == (1, 3, 64, 64) and data["images"].dtype == torch.uint8
    assert data["images"].float().std() > 5  # an object, not a blank frame


def test_train_pocket_latent_end_to_end_writes_loadable_weights(tmp_path, capsys):
    kwargs = dict(vae_steps=2, n_objects=1, views_per_object=2, heldout_objects=1, threads=1, checkpoint_every=2)
    stats = tl.train_pocket_latent(tmp_path / "run", tmp_path / "w", latent_unet_steps=2, **kwargs)
    assert stats["latent_shape"] == [4, 16, 16] and stats["data"]["resolution"] == 64
    assert stats["scaling_factor"] > 0 and stats["vae_psnr_heldout"] > 5
    assert (tmp_path / "w" / tl.STATS_FILE).exists()
    prior = load_diffusion("pocket-latent", weights_dir=tmp_path / "w")
    assert prior.vae.config.scaling_factor == pytest.approx(stats["scaling_factor"])
    assert prior.sample(["a red mug"], steps=2).shape == (1, 3, 64, 64)
    capsys.readouterr()
    tl.train_pocket_latent(tmp_path / "run", tmp_path / "w", latent_unet_steps=3, resume=True, **kwargs)
    assert "[vae] resumed" in capsys.readouterr().out  # the trained VAE is reused, not retrained


def test_shipped_latent_prior_reconstructs_held_out_renders_and_samples_what_the_prompt_says():
    """The shipped weights (text3d_edu/weights/POCKET_LDM_MODEL_CARD.md): the VAE on renders it never saw, and
    guided samples judged by the pocket CLIP among the 130 catalogue captions (chance: 1/13 kind, 1/10 colour)."""
    from text3d_edu.priors import data as pocket_data
    from text3d_edu.priors import load_clip
    from text3d_edu.toyworld import COLOURS, catalogue_captions

    prior, clip = load_diffusion("pocket-latent"), load_clip("pocket")
    held = pocket_data.render_dataset(13, 2, seed=7, held_out=True, resolution=64)  # 26 unseen renders
    assert tl.reconstruction_psnr(prior.vae, held["images"]) >= 28.0
    prompts = [("a red mug", 3, 0), ("a green chair", 1, 3), ("a yellow duck", 11, 2), ("a purple rocket", 8, 5)]
    samples = prior.sample([p for p, _, _ in prompts], n=4, guidance=5.0, steps=25,
                           generator=torch.Generator().manual_seed(0))
    assert samples.shape == (16, 3, 64, 64)
    choice = clip.classify(samples, catalogue_captions())
    kind, colour = choice // len(COLOURS), choice % len(COLOURS)
    assert (kind == torch.tensor([k for _, k, _ in prompts]).repeat_interleave(4)).float().mean() >= 0.75
    assert (colour == torch.tensor([c for _, _, c in prompts]).repeat_interleave(4)).float().mean() >= 0.75
