"""``gen4d view``'s scene (no browser): the Gaussians and frame count of reconstruct, image and text runs against the
run's own PLY export, covariances against their definition, a run still training, the viser server's slider and
its reload when the run writes a checkpoint; ``gen4d export --format html``."""

import base64
import json
import re
import socket
import time

import numpy as np
import pytest
import torch
from test_dg4d import TINY as DG4D_TINY
from test_dg4d import disc, frames_dir
from test_fourdfy import TINY as FOURDFY_TINY
from test_reconstruct import TINY as RECONSTRUCT_TINY

from gen4d.cli import main
from gen4d.data.synthetic import write_synthetic_scene
from gen4d.export.ply import load_inria_ply
from gen4d.models import registry
from gen4d.recipes.dg4d import build_config, run_dg4d
from gen4d.sh import sh0_to_rgb
from gen4d.viewer import build_viewer_scene

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished tiny runs of three recipes, each exporting its per-frame PLY: {kind: run folder}."""
    root = tmp_path_factory.mktemp("viewer-runs")
    before = registry.model_set()
    try:
        scene = root / "scene"
        write_synthetic_scene("bouncing_balls", scene, resolution=24, train_views=4, train_times=3, test_views=2, seed=0)
        out = {"reconstruct": root / "reconstruct", "image": root / "image", "text": root / "text"}
        assert main(["reconstruct", str(scene), "--out", str(out["reconstruct"]), "--quiet", *RECONSTRUCT_TINY,
                     "export.formats=[ply,glb]"]) == 0
        image = root / "disc.png"
        disc(24, 24).save(image)
        assert main(["image", str(image), "--out", str(out["image"]), "--driving-video", str(frames_dir(root / "frames", 6)),
                     *DG4D_TINY, "export.formats=[ply]"]) == 0
        assert main(["text", "a panda dancing", "--recipe", "fourdfy", "--out", str(out["text"]), "--models", "tiny", "--quiet",
                     *FOURDFY_TINY, "export.formats=[ply]", "export.frames=5"]) == 0
    finally:
        registry.set_model_set(before)
    return out


@pytest.mark.parametrize("kind, frames", [("reconstruct", 3), ("image", 6), ("text", 5)])
def test_scene_has_the_exported_gaussians_at_every_frame(runs, kind, frames):
    scene = build_viewer_scene(runs[kind])
    plys = sorted((runs[kind] / "exports" / "ply").glob("frame_*.ply"))
    assert scene.num_frames == len(plys) == frames
    assert scene.complete and scene.stage == "dynamic"
    for splats, ply in zip(scene.splats, plys):
        ref = load_inria_ply(ply)  # written by the export: frame i at time i / (T - 1)
        np.testing.assert_allclose(splats.centers, ref.means.numpy(), atol=1e-5)
        np.testing.assert_allclose(splats.opacities[:, 0], ref.opacities.numpy(), atol=1e-5)
        np.testing.assert_allclose(splats.rgbs, sh0_to_rgb(ref.sh[:, 0]).clamp(0, 1).numpy(), atol=1e-5)
        # covariance = R diag(s^2) R^T: each rotated axis is an eigenvector with eigenvalue s^2
        w, x, y, z = torch.nn.functional.normalize(ref.quats.double(), dim=-1).unbind(-1)
        first_axis = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], -1).numpy()
        cov = splats.covariances.astype(np.float64)
        s0 = ref.scales.double().numpy()[:, 0]
        np.testing.assert_allclose(np.einsum("nij,nj->ni", cov, first_axis), (s0**2)[:, None] * first_axis,
                                   rtol=1e-4, atol=1e-6 * float(s0.max() ** 2))
        np.testing.assert_allclose(np.trace(cov, axis1=1, axis2=2), (ref.scales.double() ** 2).sum(-1).numpy(), rtol=1e-4)


def test_any_frame_count_samples_times_evenly(runs):
    scene = build_viewer_scene(runs["image"], frames=11)
    assert scene.num_frames == 11
    moved = [float(np.abs(s.centers - scene.splats[0].centers).max()) for s in scene.splats]
    assert moved[0] == 0 and max(moved) > 0  # the run moves
    # times 0 and 1 are the first and last driving frames: the same Gaussians as the 6-frame export's ends
    ends = sorted((runs["image"] / "exports" / "ply").glob("frame_*.ply"))
    np.testing.assert_allclose(scene.splats[-1].centers, load_inria_ply(ends[-1]).means.numpy(), atol=1e-5)


def test_mesh_follows_the_gaussians(runs):
    scene = build_viewer_scene(runs["reconstruct"])
    base, verts = scene.mesh()
    assert verts.shape == (scene.num_frames, len(base.vertices), 3)
    np.testing.assert_allclose(verts[0], base.vertices, atol=1e-5)  # frame 0 is the surface itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_still_training_then_reloaded_when_it_finishes(tmp_path, restore_model_set):
    pytest.importorskip("viser")
    from gen4d.viewer.server import RunViewer

    image = tmp_path / "image.png"
    disc(24, 24).save(image)
    registry.set_model_set("tiny")
    overrides = [a for a in DG4D_TINY if "=" in a] + ["export.formats=[ply]"]
    cfg = build_config("default", overrides, {"input": str(image), "driving": {"path": str(frames_dir(tmp_path / "frames", 5))}})
    out = tmp_path / "run"
    assert run_dg4d(cfg, out, quiet=True, stop_after_step=6) == {}  # killed at dynamic step 2 of 4
    scene = build_viewer_scene(out)
    state = json.loads((out / "stages" / "dynamic" / "state.json").read_text())
    assert (scene.stage, scene.step, scene.iterations, scene.complete) == ("dynamic", 2, 4, False)
    assert scene.num_gaussians == state["num_gaussians"] and scene.num_frames == 5

    viewer = RunViewer(str(out), port=_free_port(), refresh_seconds=0.2)
    try:
        assert viewer.url.startswith("http://127.0.0.1:")
        assert viewer.time_slider.max == 4 and len(viewer._frame_nodes) == 5
        viewer.time_slider.value = 3
        assert [n.visible for n in viewer._frame_nodes] == [False, False, False, True, False]
        assert viewer.frame_label.content.startswith("frame 4 of 5")
        run_dg4d(cfg, out, quiet=True)  # the run finishes: the viewer reloads from the final checkpoint
        deadline = time.monotonic() + 30
        while not viewer.scene.complete and time.monotonic() < deadline:
            time.sleep(0.2)
        assert viewer.scene.complete and viewer.scene.step == 4
        final = sorted((out / "exports" / "ply").glob("frame_*.ply"))
        np.testing.assert_allclose(viewer.scene.splats[-1].centers, load_inria_ply(final[-1]).means.numpy(), atol=1e-5)
        assert viewer.frame_label.content.startswith("frame 4 of 5")  # the slider stayed where it was
    finally:
        viewer.close()


def test_view_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a gen4d run" in err and len(err.strip().splitlines()) == 1


def test_html_export_embeds_the_animated_glb_and_needs_no_network(runs):
    out = runs["reconstruct"]
    assert main(["export", str(out), "--format", "html", "--quiet"]) == 0
    page = (out / "exports" / "player.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "import(" not in page
    asset = json.loads(re.search(r'<script id="asset" type="application/json">(.*?)</script>', page, re.S).group(1))
    # the same animated GLB as the glb export, byte for byte
    assert base64.b64decode(asset["glb"]) == (out / "exports" / "animated.glb").read_bytes()
    assert asset["fps"] == 12.0
