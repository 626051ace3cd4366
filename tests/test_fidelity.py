"""Ground-truth fidelity: validated on the truth itself, on a NeRF fitted to the truth, and on the starting blob."""

import pytest
import torch

from text3d_edu import toyworld, world_render
from text3d_edu.cameras import sample_cameras
from text3d_edu.fidelity import fidelity, fidelity_cameras, truth_renders, turned
from text3d_edu.fields import GridField
from text3d_edu.generate import field_fidelity
from text3d_edu.nerf import FitConfig, fit

PROMPT = "a blue table"


@pytest.fixture(scope="module")
def truths():
    return truth_renders(PROMPT, fidelity_cameras())


def test_the_truth_scores_perfectly_at_its_own_offset(truths):
    truth = truths[0]
    figures = fidelity(truth["albedo"].permute(0, 3, 1, 2), truth["alpha"], PROMPT, fidelity_cameras(), truths)
    assert figures["silhouette_iou"] == 1.0 and figures["best_offset"] == 0.0
    assert figures["colour_error"] == 0.0
    assert figures["frame_share"] == figures["truth_frame_share"]
    assert 0.0 < figures["truth_frame_share"] < 0.3  # a table covers a small part of the frame


def test_a_turned_object_is_found_at_its_offset(truths):
    obj = toyworld.parse_caption(PROMPT)
    seen = world_render.render(obj, turned(fidelity_cameras(), 90.0))  # the object turned by −90°
    figures = fidelity(seen["rgb"].permute(0, 3, 1, 2), seen["alpha"], PROMPT, fidelity_cameras(), truths)
    assert figures["best_offset"] == 90.0 and figures["silhouette_iou"] == 1.0


def test_another_kind_and_colour_score_worse(truths):
    mug = world_render.render(toyworld.parse_caption("a red mug"), fidelity_cameras())
    figures = fidelity(mug["rgb"].permute(0, 3, 1, 2), mug["alpha"], PROMPT, fidelity_cameras(), truths)
    assert figures["silhouette_iou"] < 0.5
    assert figures["colour_error"] > 0.2


def test_a_fitted_nerf_scores_high_and_the_starting_blob_low(truths):
    obj = toyworld.parse_caption(PROMPT)
    cameras = sample_cameras(24, torch.Generator().manual_seed(0), resolution=48)
    images = world_render.render(obj, cameras)["rgb"]
    fitted = GridField(32)
    fit(fitted, cameras, images, FitConfig(steps=300, eval_every=1000, lr=0.1), progress=False)
    nerf = field_fidelity(fitted, PROMPT, truths)
    blob = field_fidelity(GridField(32, init="blob"), PROMPT, truths)
    assert nerf["silhouette_iou"] > 0.7 and nerf["best_offset"] == 0.0
    assert blob["silhouette_iou"] < 0.3
    assert blob["frame_share"] > 3 * blob["truth_frame_share"]
    assert nerf["skirt_share"] < blob["skirt_share"]
    assert nerf["colour_error"] < 0.15


def test_bad_shapes_and_non_catalogue_prompts():
    cameras = fidelity_cameras()
    with pytest.raises(ValueError, match="expected rgb"):
        fidelity(torch.zeros(8, 64, 64, 3), torch.zeros(8, 64, 64), PROMPT, cameras)
    assert fidelity(torch.zeros(8, 3, 64, 64), torch.zeros(8, 64, 64), "a castle made of cheese", cameras) is None
