"""Variational Score Distillation (ProlificDreamer): ε_φ's LoRA and camera MLP, the θ and φ steps, and
``generate --method vsd`` with its particles, outputs, resume and bad input."""

import json

import pytest
import torch

import text3d_edu.generate
from text3d_edu.cameras import sample_cameras
from text3d_edu.cli import main
from text3d_edu.generate import GenerateConfig, check_particle_memory, generate, judge_cameras, render_views
from text3d_edu.guidance.sds import SDSConfig, sample_timesteps, sds_loss
from text3d_edu.guidance.vsd import LoRANoisePredictor, VSDConfig, lora_loss, vsd_loss
from text3d_edu.results import GridResult, ParticlesResult, load_result


def c2w(n: int, seed: int = 0) -> torch.Tensor:
    """n random camera-to-world matrices (n, 4, 4)."""
    return sample_cameras(n, torch.Generator().manual_seed(seed), resolution=32).c2w


def tiny(**kwargs) -> GenerateConfig:
    """A VSD run small enough for a test: 2 particles of a 12³ grid, one 16×16 view each per step."""
    vsd = VSDConfig(**{"particles": 2, **kwargs.pop("vsd", {})})
    # opaque_from 0: the resume test's shorter first run stands in for an interrupted one (a schedule in
    # fractions of the steps would move with its total)
    return GenerateConfig(method="vsd", resolution=16, grid_resolution=12, cameras_per_step=1, n_samples=16,
                          vsd=vsd, **{"opaque_from": 0.0, **kwargs})


def test_eps_phi_starts_as_the_pretrained_prediction(prior):
    eps_phi = LoRANoisePredictor(prior)
    x_t, cond = torch.randn(3, 3, 32, 32), prior.encode_prompt(["a red mug"])
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        expected = prior.predict_noise(x_t, t, cond)
        torch.testing.assert_close(eps_phi.predict_noise(x_t, t, cond, c2w(3)), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(eps_phi.predict_noise(x_t, t, cond, torch.zeros(3, 4, 4)), expected,
                                   atol=1e-6, rtol=0)
    # φ is the LoRA matrices and the camera MLP, nothing of the copied U-Net
    names = [name for name, p in eps_phi.unet.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name for name in names)
    assert len(eps_phi.parameters()) == len(names) + 4  # + the camera MLP's two weights and two biases
    assert set(eps_phi.state_dict()) == {f"unet.{n}" for n in names} | {
        f"camera_mlp.{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias")}


def test_phi_step_trains_only_lora_and_camera_and_leaves_the_unet_bit_identical(prior):
    eps_phi = LoRANoisePredictor(prior)
    frozen = {k: v.clone() for k, v in prior.unet.state_dict().items()}
    copied = {n: p.detach().clone() for n, p in eps_phi.unet.named_parameters() if not p.requires_grad}
    phi = {id(p) for p in eps_phi.parameters()}
    before = [p.detach().clone() for p in eps_phi.parameters()]
    optimiser = torch.optim.AdamW(eps_phi.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    x, cameras, cond = torch.rand(4, 3, 32, 32) * 2 - 1, c2w(4), prior.encode_prompt(["a red mug"])
    for _ in range(3):
        loss, info = lora_loss(prior, eps_phi, x, cameras, cond, VSDConfig(), generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for p in eps_phi.unet.parameters():
        assert (p.grad is not None) == (id(p) in phi)
    assert all(p.grad is None for p in prior.unet.parameters())
    # after 3 steps every φ parameter has moved (B and the MLP's last layer first, then A and its first layer)
    assert all(not torch.equal(b, p) for b, p in zip(before, eps_phi.parameters()))
    assert all(torch.equal(frozen[k], v) for k, v in prior.unet.state_dict().items())
    assert all(torch.equal(copied[n], p) for n, p in eps_phi.unet.named_parameters() if not p.requires_grad)
    # the camera now matters: the same x_t, t, y from two cameras give two predictions
    with torch.no_grad():
        x_t = torch.randn(1, 3, 32, 32)
        a, b = (eps_phi.predict_noise(x_t, 500, cond, cameras[i:i + 1]) for i in (0, 1))
    assert (a - b).abs().max() > 1e-6


def test_camera_dropout_replaces_cameras_by_zeros(prior, monkeypatch):
    eps_phi = LoRANoisePredictor(prior)
    seen = []
    monkeypatch.setattr(eps_phi, "predict_noise", lambda x_t, t, cond, cameras: seen.append(cameras) or x_t)
    cond, cameras = prior.encode_prompt(["a red mug"]), c2w(400)
    lora_loss(prior, eps_phi, torch.zeros(400, 3, 32, 32), cameras, cond, VSDConfig(camera_dropout=0.1),
              torch.Generator().manual_seed(0))
    dropped = (seen[0] == 0).flatten(1).all(dim=1)
    assert 0.05 < dropped.float().mean() < 0.15
    assert torch.equal(seen[0][~dropped], cameras[~dropped])


class TrueNoise:
    """ε_φ := ε: a 'noise predictor' that returns exactly the noise the θ step will add."""

    def __init__(self, prior, shape, t_range, seed):
        generator = torch.Generator().manual_seed(seed)  # the θ step draws t, then ε, from a generator so seeded
        self.t = sample_timesteps(prior, shape[0], t_range, generator)
        self.noise = torch.randn(shape, generator=generator)

    def predict_noise(self, x_t, t, cond, cameras):
        assert torch.equal(t, self.t)
        return self.noise


def test_vsd_with_the_true_noise_as_eps_phi_is_sds(prior):
    cond, uncond = prior.encode_prompt(["a red mug, side view"]), prior.encode_unconditional(1)
    images = torch.rand(2, 3, 32, 32)
    sds_images, vsd_images = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    loss, info = sds_loss(prior, sds_images, cond, uncond, SDSConfig(guidance=10.0), torch.Generator().manual_seed(0))
    loss.backward()
    config = VSDConfig(guidance=10.0)
    loss, vsd_info = vsd_loss(prior, TrueNoise(prior, (2, 3, 32, 32), config.t_range, 0), vsd_images, c2w(2), cond,
                              uncond, config=config, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.equal(vsd_info["t"], info["t"])
    torch.testing.assert_close(vsd_images.grad, sds_images.grad, atol=1e-7, rtol=0)
    assert sds_images.grad.abs().sum() > 0


def test_vsd_at_step_0_is_the_guidance_direction_alone(prior):
    """With ε_φ = ε_pretrain(x_t; y, t) at step 0, ε̂_pretrain − ε_φ = ω (ε_pretrain(x_t; y, t) − ε_pretrain(x_t; t)):
    the noise residual of SDS is gone, only the guidance direction is left."""
    cond, uncond = prior.encode_prompt(["a red mug"]), prior.encode_unconditional(1)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss, info = vsd_loss(prior, LoRANoisePredictor(prior), images, c2w(2), cond, uncond,
                          config=VSDConfig(guidance=5.0), generator=torch.Generator().manual_seed(0))
    loss.backward()
    generator = torch.Generator().manual_seed(0)
    t = sample_timesteps(prior, 2, VSDConfig().t_range, generator)
    x = images.detach() * 2 - 1
    x_t = prior.add_noise(x, t, torch.randn(x.shape, generator=generator))
    with torch.no_grad():
        direction = prior.predict_noise(x_t, t, cond) - prior.predict_noise(x_t, t, uncond)
    w = (1 - prior.alphas_cumprod[t]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(info["grad"], w * 5.0 * direction, atol=1e-5, rtol=1e-4)
    assert torch.equal(info["x"], x)


def test_vsd_config_rejects_bad_options():
    for kwargs, fix in [({"particles": 0}, "particles must be a whole number n >= 1"), ({"particles": 1.5}, "n >= 1"),
                        ({"lora_rank": 0}, "lora_rank"), ({"lora_lr": 0.0}, "lora_lr"),
                        ({"camera_dropout": 1.0}, "camera_dropout"), ({"t_range": (0.9, 0.1)}, "t_range"),
                        ({"lora_t_range": (0.0, 1.5)}, "lora_t_range"), ({"weighting": "sqrt"}, "weighting"),
                        ({"lora_steps_per_theta_step": 0}, "lora_steps_per_theta_step")]:
        with pytest.raises(ValueError, match=fix):
            VSDConfig(**kwargs)


def test_generate_vsd_writes_every_particle_renders_back_and_resumes_exactly(tmp_path, prior, clip, monkeypatch):
    # with the paper's t annealing (t_max 0.98 → 0.5 after half the steps), which the resume must replay too
    config = tiny(steps=4, checkpoint_every=2, anneal_t_max=(0.5, 0.5))
    straight, metrics = generate("a red mug", tmp_path / "a", config, prior=prior, clip=clip, progress=False)
    # the particles are told apart by their own cameras, t and ε
    assert not torch.equal(straight[0].colour_logits, straight[1].colour_logits)
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["method"] == "vsd" and saved["particles"] == 2 and len(saved["per_particle"]) == 2
    for key in ("kind_acc", "colour_acc", "silhouette_iou", "skirt_share", "colour_error", "initial_kind_acc"):
        assert saved[key] == pytest.approx(sum(m[key] for m in saved["per_particle"]) / 2, abs=1e-3)
    assert len(saved["judged_as"]) == 16 and saved["particle_spread"] > 0
    for k in range(2):
        for name in ("views.png", "turntable.gif", "metrics.json", "checkpoint.pt"):
            assert (tmp_path / "a" / f"particle_{k}" / name).exists()
        # a 12³ grid after 4 steps may hold no surface yet: then metrics say so instead of a mesh
        assert (tmp_path / "a" / f"particle_{k}" / "mesh.glb").exists() or "mesh_error" in saved["per_particle"][k]
    assert (tmp_path / "a" / "views.png").exists()
    # `text3d-edu render` reads the whole result (particle-major) and each particle's folder alone
    loaded = load_result(tmp_path / "a")
    assert isinstance(loaded, ParticlesResult) and len(loaded.particles) == 2
    expected = torch.cat([render_views(field, judge_cameras()) for field in straight])
    torch.testing.assert_close(loaded.render(judge_cameras()), expected, atol=1e-5, rtol=0)
    one = load_result(tmp_path / "a" / "particle_1")
    assert isinstance(one, GridResult) and torch.equal(one.field.log_sigma, straight[1].log_sigma)
    assert main(["render", str(tmp_path / "a"), "--azimuths", "0", "90", "--out", str(tmp_path / "v.png")]) == 0

    # resume: 2 steps, "interrupted" (no metrics.json), then on to 4 — the same particles and ε_φ as straight
    monkeypatch.setattr(text3d_edu.generate, "write_outputs", lambda *args: None)  # images are tested above
    monkeypatch.setattr(text3d_edu.generate, "_write_particle_views", lambda *args: None)
    generate("a red mug", tmp_path / "b", tiny(steps=2, checkpoint_every=2), prior=prior, clip=clip, progress=False)
    (tmp_path / "b" / "metrics.json").unlink()
    resumed, _ = generate("a red mug", tmp_path / "b", config, prior=prior, clip=clip, resume=True, progress=False)
    for a, b in zip(straight, resumed):
        assert torch.equal(a.log_sigma, b.log_sigma) and torch.equal(a.colour_logits, b.colour_logits)
    state_a, state_b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in "ab")
    assert state_a["lora"].keys() == state_b["lora"].keys()
    assert all(torch.equal(state_a["lora"][k], state_b["lora"][k]) for k in state_a["lora"])
    assert any(v.abs().sum() > 0 for k, v in state_a["lora"].items() if "camera_mlp.2" in k)  # ε_φ did learn
    (tmp_path / "b" / "metrics.json").unlink()
    with pytest.raises(ValueError, match="holds 2 VSD particles, not 3"):
        generate("a red mug", tmp_path / "b", tiny(steps=4, vsd={"particles": 3}), prior=prior, clip=clip,
                 resume=True, progress=False)


def test_bad_particle_counts_are_clear_errors_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["generate", "a red mug", "--method", "vsd", "--particles", "0", "--out", str(out)]) == 2
    assert "particles must be a whole number n >= 1" in capsys.readouterr().err
    assert main(["generate", "a red mug", "--particles", "2", "--out", str(out)]) == 2
    assert "--method vsd only" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"100000000 particles of a 32³ grid need about 2\d\d\d\d\d\.\d GiB "
                                         r"\(2\.5 MiB each.*use at most \d+ particles"):
        generate("a red mug", out, GenerateConfig(method="vsd", vsd=VSDConfig(particles=10**8)), progress=False)
    assert not out.exists()
    assert check_particle_memory(4, 32, available=2**30) == 4 * 5 * 4 * 32**3 * 4
    with pytest.raises(ValueError, match="use at most 3 particles"):
        check_particle_memory(4, 32, available=10 * 2**20)


@pytest.mark.parametrize(("argv", "particles", "omega"), [
    ([], 2, 7.5), (["--particles", "3", "--guidance", "7"], 3, 7.0), (["--backend", "stable-diffusion"], 2, 6.5)])
def test_generate_command_passes_particles_and_vsd_guidance(argv, particles, omega, generate_config_of):
    config = generate_config_of(["a red mug", "--method", "vsd", *argv])
    assert config.method == "vsd" and config.vsd.particles == particles and config.vsd.guidance == omega


def test_stable_diffusion_vsd_step_with_tiny_components(clip):
    from test_priors import tiny_stable_diffusion

    prior = tiny_stable_diffusion()
    eps_phi = LoRANoisePredictor(prior)
    assert prior.unet.class_embedding is None and eps_phi.camera_into == "time"  # the copy got a class embedding
    cond, uncond = prior.encode_prompt(["a red mug"]), prior.encode_unconditional()
    x_t, cameras = torch.randn(2, 4, 8, 8), c2w(2)
    with torch.no_grad():
        torch.testing.assert_close(eps_phi.predict_noise(x_t, 300, cond, cameras), prior.predict_noise(x_t, 300, cond),
                                   atol=1e-6, rtol=0)
    theta = torch.nn.Parameter(torch.zeros(2, 3, 16, 16))  # stands in for θ: renders x = g(θ) = sigmoid(θ)
    optimiser = torch.optim.AdamW(eps_phi.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    loss, info = vsd_loss(prior, eps_phi, torch.sigmoid(theta), cameras, cond, uncond, config=VSDConfig(guidance=6.5),
                          generator=generator)
    loss.backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    phi_loss, _ = lora_loss(prior, eps_phi, info["x"], cameras, cond, VSDConfig(), generator)
    phi_loss.backward()
    assert all(p.grad is not None for p in eps_phi.parameters())
    optimiser.step()
    with torch.no_grad():
        moved = eps_phi.predict_noise(x_t, 300, cond, cameras) - prior.predict_noise(x_t, 300, cond)
    assert moved.abs().max() > 0
    # and the whole loop runs on it: one VSD step of one particle, latents through the tiny VAE
    config = tiny(steps=1, vsd={"particles": 1, "guidance": 6.5})
    fields, metrics = generate("a red mug", None, config, prior=prior, clip=clip, progress=False)
    assert len(fields) == 1 and metrics["particles"] == 1 and metrics["method"] == "vsd"
