"""``text3d-edu render``: a generated result on disk renders back to the images generate saw."""

import json

import numpy as np
import pytest
import torch

from text3d_edu.cli import main
from text3d_edu.generate import GenerateConfig, generate, judge_cameras, render_views
from text3d_edu.results import GridResult, load_result, render_result


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A 3-step SDS result on disk: (its folder, the field generate returned)."""
    out = tmp_path_factory.mktemp("render") / "mug"
    field, _ = generate("a red mug", out, GenerateConfig(steps=3, checkpoint_every=3), progress=False)
    return out, field


def test_render_reproduces_the_judges_views(result, tmp_path):
    out, field = result
    expected = render_views(field, judge_cameras())  # the images of views.png
    loaded = load_result(out)
    assert isinstance(loaded, GridResult)
    torch.testing.assert_close(loaded.render(judge_cameras()), expected, atol=1e-5, rtol=0)
    assert main(["render", str(out), "--out", str(tmp_path / "views.npy")]) == 0  # defaults: the judge's cameras
    images = np.load(tmp_path / "views.npy")
    assert images.shape == (8, 3, 32, 32) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_allclose(images, expected.numpy(), atol=1e-5, rtol=0)


def test_render_writes_a_png_and_never_overwrites(result, tmp_path, capsys):
    out, _ = result
    png = tmp_path / "sub" / "four.png"
    assert main(["render", str(out), "--azimuths", "0", "90", "180", "270", "--resolution", "16",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 0 and str(png) in capsys.readouterr().out
    assert main(["render", str(out), "--azimuths", "0", "--out", str(png)]) == 2
    assert "--force" in capsys.readouterr().err
    images = render_result(out, png, [45.0], elevation=30.0, radius=3.0, resolution=8, force=True)
    assert images.shape == (1, 3, 8, 8)


def test_render_rejects_bad_input(result, tmp_path, capsys):
    out, _ = result
    npy = tmp_path / "x.npy"
    for kwargs, fix in [({"azimuths": []}, "at least one"), ({"resolution": 4}, "8 or more"),
                        ({"elevation": 90.0}, "between -90 and 90"), ({"radius": 0.0}, "positive")]:
        with pytest.raises(ValueError, match=fix):
            render_result(out, npy, **{"azimuths": [0.0], **kwargs})
    with pytest.raises(ValueError, match=r"\.png .* or \.npy"):
        render_result(out, tmp_path / "x.jpg", [0.0])
    with pytest.raises(SystemExit):  # argparse: --azimuths needs at least one value
        main(["render", str(out), "--azimuths", "--out", str(npy)])
    assert not npy.exists()


def test_load_result_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_result(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no checkpoint.pt"):
        load_result(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"method": "sds", "representation": "nurbs"}))
    with pytest.raises(ValueError, match="'nurbs'.*known representations are grid"):
        load_result(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_result(tmp_path)
    assert main(["render", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 2
