"""Shared test settings."""

import pytest
import torch

from text3d_edu.priors import load_clip, load_diffusion


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models gain nothing from a second thread, and a shared 2-core machine loses a lot to it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prior():
    """The pocket diffusion prior, loaded once per test module."""
    return load_diffusion("pocket")


@pytest.fixture(scope="module")
def clip():
    """The pocket CLIP, loaded once per test module."""
    return load_clip("pocket")


@pytest.fixture
def generate_config_of(monkeypatch, tmp_path):
    """argv of ``text3d-edu generate`` (without the subcommand) → the ``GenerateConfig`` the command builds; the
    library's ``generate`` is replaced by a stand-in that stops there, and no real weights are loaded."""
    import text3d_edu.generate
    import text3d_edu.priors
    from text3d_edu.cli import main

    class Called(Exception):
        """Raised by the stand-in for ``generate`` with the config it was given."""

    def fake_generate(prompt, out, config, prior=None, resume=False):
        raise Called(config)

    monkeypatch.setattr(text3d_edu.generate, "generate", fake_generate)
    monkeypatch.setattr(text3d_edu.priors, "load_diffusion", lambda backend: None)  # no real weights offline

    def config_of(argv: list[str]):
        with pytest.raises(Called) as called:
            main(["generate", *argv, "--out", str(tmp_path)])
        return called.value.args[0]

    return config_of
