"""The plain-torch rasteriser: it agrees with the sphere-traced Pocket World, breaks ties on shared edges once,
keeps the nearest triangle, and its gradients (soft silhouette, colours) match finite differences."""

import pytest
import torch
import torch.nn.functional as F

from text3d_edu import world_render
from text3d_edu.cameras import generate_rays, orbit_cameras
from text3d_edu.raster import edge_values, inside_test, interpolate, rasterize, render_mesh
from text3d_edu.toyworld import BACKGROUND, make_object


def as_tensors(mesh):
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    colours = torch.as_tensor(mesh.visual.vertex_colors[:, :3], dtype=torch.float32) / 255
    return vertices, faces, colours


@pytest.mark.parametrize("kind", ["snowman", "duck"])
def test_matches_world_render(kind):
    """Same cameras → same silhouette and, inside, the same shaded colour and depth (the mesh's vertex colours are
    world_render's shading at the vertices). world_render averages 2×2 rays per pixel, so we rasterise at 2× and
    average the same way before thresholding at ½."""
    obj = make_object(kind, "red")
    vertices, faces, colours = as_tensors(world_render.mesh(obj, 64))
    cameras = orbit_cameras([30.0, 200.0], 20.0, 3.2, resolution=64)
    truth = world_render.render(obj, cameras, supersample=2)
    fine = rasterize(vertices, faces, cameras.with_resolution(128))
    true_mask = truth["alpha"] > 0.5
    for name, fine_coverage, least in [("hard coverage", (fine.face_index >= 0).float(), 0.98),
                                       ("soft silhouette", fine.silhouette, 0.9)]:  # SoftRas's halo fattens it
        mask = F.avg_pool2d(fine_coverage[:, None], 2)[:, 0] > 0.5
        iou = (mask & true_mask).sum() / (mask | true_mask).sum()
        assert iou >= least, f"{kind}: {name} IoU {iou:.3f}"
    fragments = rasterize(vertices, faces, cameras)
    image = render_mesh(vertices, faces, colours, cameras)
    interior = (fragments.face_index >= 0) & (truth["alpha"] == 1) & (fragments.silhouette > 0.999)
    assert interior.sum() > 300
    colour_error = (image["rgb"][interior] - truth["rgb"][interior]).abs()
    assert colour_error.mean() < 0.03 and colour_error.quantile(0.95) < 0.1, f"{kind}: {colour_error.mean():.3f}"
    depth_error = (image["depth"][interior] - truth["depth"][interior]).abs()
    assert depth_error.median() < 0.01, f"{kind}: median depth error {depth_error.median():.4f}"


def test_shared_edges_are_counted_once():
    """A 2×2 grid of quads, each split into two triangles, with corners on pixel centres: every pixel centre on a
    shared edge or corner belongs to exactly one triangle (top-left rule), nothing outside is drawn."""
    corners = torch.tensor([[0.5 + 3 * i, 0.5 + 3 * j] for j in range(3) for i in range(3)], dtype=torch.float64)
    triangles = []
    for j in range(2):
        for i in range(2):
            a, b, c, d = 3 * j + i, 3 * j + i + 1, 3 * (j + 1) + i, 3 * (j + 1) + i + 1
            triangles += [[a, b, d], [a, d, c]] if (i + j) % 2 else [[a, b, c], [b, d, c]]
    triangles = torch.tensor(triangles)
    xs = torch.arange(10, dtype=torch.float64) + 0.5
    pixels = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), dim=-1).reshape(-1, 2)  # (100, 2) centres
    count = torch.zeros(len(pixels), dtype=torch.long)
    for triangle in triangles:
        edges, gradients = edge_values(corners[triangle].expand(len(pixels), 3, 2),
                                       triangle.expand(len(pixels), 3), pixels)
        count += inside_test(edges, gradients).long()
    in_square = ((pixels >= 0.5) & (pixels < 6.5)).all(-1)  # the square's top and left sides, not its bottom/right
    assert (count[in_square] == 1).all(), count.reshape(10, 10)
    assert (count[~in_square] == 0).all(), count.reshape(10, 10)


def test_quad_renders_without_cracks():
    """Two triangles forming a square facing the camera: every pixel of the square is covered, by both faces."""
    vertices = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cameras = orbit_cameras([0.0], 0.0, 3.0, resolution=32)
    face_index = rasterize(vertices, faces, cameras).face_index[0]
    covered = face_index >= 0
    rows, columns = covered.any(1).nonzero(), covered.any(0).nonzero()
    box = face_index[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    assert (box >= 0).all() and covered.sum() == box.numel()
    assert (box == 0).sum() > 50 and (box == 1).sum() > 50


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_depth_test_keeps_the_nearer_triangle(order):
    near = [[-0.6, -0.6, 0.5], [0.6, -0.6, 0.5], [0.0, 0.6, 0.5]]
    far = [[-0.8, -0.5, -0.5], [0.8, -0.5, -0.5], [0.0, 0.8, -0.5]]
    vertices = torch.tensor(near + far)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])[order]
    cameras = orbit_cameras([0.0], 0.0, 3.0, resolution=32)
    fragments = rasterize(vertices, faces, cameras)
    centre = fragments.face_index[0, 16, 16]
    assert faces[centre].tolist() == [0, 1, 2]
    # the pixel centre (16.5, 16.5) is just off the axis; its ray meets the plane z = 0.5 at distance ≈ 2.5
    assert abs(fragments.depth[0, 16, 16].item() - 2.5) < 0.01
    assert (fragments.face_index[0] == order.index(1)).any()  # the far triangle shows where it sticks out


def test_gradients_match_finite_differences():
    """One triangle, in float64: the soft silhouette's gradient in the vertex positions (nonzero, unlike a hard
    z-buffer) and the image's gradient in the vertex colours and positions match central differences."""
    vertices = torch.tensor([[-0.5, -0.4, 0.1], [0.6, -0.3, -0.2], [0.0, 0.5, 0.0]], dtype=torch.float64,
                            requires_grad=True)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9]], dtype=torch.float64,
                           requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    cameras = orbit_cameras([10.0], 15.0, 3.0, resolution=16)
    weights = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def silhouette(v):
        return rasterize(v, faces, cameras, sigma=2.0).silhouette

    def image(v, c):
        return (render_mesh(v, faces, c, cameras, sigma=2.0)["rgb"] * weights).sum()

    assert torch.autograd.gradcheck(silhouette, (vertices,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(image, (vertices, colours), eps=1e-6, atol=1e-5)
    outside = rasterize(vertices, faces, cameras).face_index < 0
    (grad,) = torch.autograd.grad((silhouette(vertices) * outside).sum(), vertices)
    assert grad.abs().sum() > 1e-3  # pixels outside the triangle still pull its vertices


def test_bad_shapes_raise_clear_errors():
    vertices, faces = torch.rand(4, 3), torch.tensor([[0, 1, 2], [0, 2, 3]])
    cameras = orbit_cameras([0.0], resolution=8)
    with pytest.raises(ValueError, match=r"vertices .*\(V, 3\)"):
        rasterize(vertices[None], faces, cameras)
    with pytest.raises(ValueError, match=r"faces .*\(F, 3\)"):
        rasterize(vertices, faces.float(), cameras)
    with pytest.raises(ValueError, match="same mesh"):
        rasterize(vertices, faces + 2, cameras)
    with pytest.raises(ValueError, match=r"vertex_colours of shape \(V, 3\)"):
        render_mesh(vertices, faces, torch.rand(3, 3), cameras)


def test_empty_mesh_and_faces_behind_the_camera_draw_nothing():
    cameras = orbit_cameras([0.0], 0.0, 3.2, resolution=8)
    empty = render_mesh(torch.rand(3, 3), torch.zeros(0, 3, dtype=torch.long), torch.rand(3, 3), cameras)
    behind = torch.tensor([[0.0, 0.0, 2.9], [1.0, 0.0, 3.5], [0.0, 1.0, 2.9]])  # one vertex behind the eye (z = 3.2)
    clipped = render_mesh(behind, torch.tensor([[0, 1, 2]]), torch.rand(3, 3), cameras)
    for image in (empty, clipped):
        assert image["opacity"].abs().sum() == 0
        torch.testing.assert_close(image["rgb"], torch.tensor(BACKGROUND).expand(1, 8, 8, 3))


def test_interpolated_points_lie_on_the_pixel_rays():
    """Perspective-correct β: Σ β_i X_i of a steeply slanted triangle is the point where the pixel's ray (from
    generate_rays) meets it, at the reported depth. Screen-space (affine) barycentrics miss by up to ~0.1 here."""
    vertices = torch.tensor([[-1.0, -0.8, 1.5], [1.0, -0.6, -1.5], [0.0, 0.9, 0.0]])
    cameras = orbit_cameras([0.0], 10.0, 3.2, resolution=32)
    fragments = rasterize(vertices, torch.tensor([[0, 1, 2]]), cameras)
    covered = fragments.face_index[0] >= 0
    assert covered.sum() > 100
    points = interpolate(vertices, torch.tensor([[0, 1, 2]]), fragments)[0][covered]  # (N, 3)
    origins, directions = generate_rays(cameras)
    on_ray = origins[0][covered] + fragments.depth[0][covered, None] * directions[0][covered]
    torch.testing.assert_close(points, on_ray, atol=1e-4, rtol=0)


def test_chunking_does_not_change_the_result():
    vertices, faces, _ = as_tensors(world_render.mesh(make_object("duck", "yellow"), 32))
    cameras = orbit_cameras([45.0, 160.0], 20.0, 3.2, resolution=32)
    whole, chunked = rasterize(vertices, faces, cameras), rasterize(vertices, faces, cameras, max_pairs=997)
    assert (whole.face_index >= 0).sum() > 200
    assert torch.equal(whole.face_index, chunked.face_index)
    for name in ("barycentrics", "depth", "silhouette"):
        torch.testing.assert_close(getattr(whole, name), getattr(chunked, name), atol=1e-5, rtol=0)
