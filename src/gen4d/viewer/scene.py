"""What ``gen4d view`` shows, built from a run directory without any browser or viser: the 4D Gaussians at each frame
as splats (centres, covariances, colours, opacities) and, on request, the animated mesh the exports use.

The scene comes from the run's checkpoint through the loading code of ``gen4d export``
(:func:`gen4d.runs.load_run_scene`): the final stage's when it has one, else the newest checkpoint holding Gaussians
(a run still training). Frame ``i`` of ``T`` is at time ``i / (T - 1)`` (:func:`gen4d.cameras.frame_times`), T being
``--frames``, else the run's export frame count (``export.frames``, else its training frames), any T.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import frame_times, quat_to_rotmat
from ..config import load_section
from ..export.mesh import Mesh, extract_mesh
from ..export.scene import ExportConfig, animated_mesh
from ..gaussians.frame import GaussianFrame
from ..runs import load_run_scene
from ..sh import sh0_to_rgb


@dataclass
class Splats:
    """One frame's Gaussians in viser's layout: centers ``[N, 3]``, covariances ``[N, 3, 3]`` (R diag(s²) Rᵀ),
    rgbs ``[N, 3]`` in [0, 1] (the view-independent DC colour), opacities ``[N, 1]``; float32."""

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray


def splats_of(frame: GaussianFrame) -> Splats:
    R = quat_to_rotmat(frame.quats.double())
    s2 = frame.scales.double() ** 2
    cov = (R * s2[:, None, :]) @ R.transpose(1, 2)
    rgb = sh0_to_rgb(frame.sh[:, 0]).clamp(0.0, 1.0)
    as_np = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
    return Splats(as_np(frame.means), as_np(cov), as_np(rgb), as_np(frame.opacities[:, None]))


def checkpoint_signature(run_dir: str | os.PathLike) -> tuple:
    """Changes whenever a checkpoint of the run is written (replaced by rename: a new inode and mtime)."""
    stamps = []
    for p in sorted(Path(run_dir).glob("stages/*/checkpoint.safetensors")):
        try:
            st = p.stat()
        except FileNotFoundError:  # replaced between glob and stat
            continue
        stamps.append((p.parent.name, st.st_mtime_ns, st.st_ino))
    return tuple(stamps)


@dataclass
class ViewerScene:
    """A run's 4D asset, frame by frame, as the viewer shows it."""

    splats: list[Splats]
    """One entry per frame."""
    fps: float
    radius: float
    """Distance of the run's cameras from the origin (the input view's and the orbit's)."""
    background: tuple[float, float, float]
    stage: str
    """The stage whose checkpoint this is."""
    step: int
    iterations: int
    complete: bool
    signature: tuple
    """:func:`checkpoint_signature` when loaded."""
    frames_gaussians: list[GaussianFrame] = field(repr=False, default_factory=list)
    mesh_config: tuple[int, float] = (96, 0.5)
    _mesh: tuple[Mesh, np.ndarray] | None = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return len(self.splats)

    @property
    def num_gaussians(self) -> int:
        return len(self.splats[0].centers)

    def mesh(self) -> tuple[Mesh, np.ndarray]:
        """``(base mesh, vertices [T, V, 3])``: the first frame's surface carried by its nearest Gaussians, as the
        animated GLB export does (made on first use: marching cubes takes a moment)."""
        if self._mesh is None:
            resolution, threshold = self.mesh_config
            base = extract_mesh(self.frames_gaussians[0], resolution=resolution, threshold=threshold)
            self._mesh = animated_mesh(self.frames_gaussians, base)
        return self._mesh

    def status(self) -> str:
        state = "finished" if self.complete else f"training: step {self.step} / {self.iterations}"
        return f"stage **{self.stage}** ({state}), {self.num_gaussians} Gaussians, {self.num_frames} frames at {self.fps:g} fps"


@torch.no_grad()
def build_viewer_scene(run_dir: str | os.PathLike, frames: int | None = None, device: str | None = None) -> ViewerScene:
    """The run's latest 4D asset as per-frame splats (module docstring). Raises Gen4DError for a folder that is not a
    run, or a run with no checkpoint holding Gaussians yet."""
    signature = checkpoint_signature(run_dir)
    run = load_run_scene(run_dir, device=device or "cpu", latest=True)
    export = load_section(ExportConfig, run.asset.export)
    count = frames or export.frames or run.asset.frames
    gaussians = [run.scene.frame_at(float(t)).detach() for t in frame_times(count)]
    return ViewerScene(
        splats=[splats_of(f) for f in gaussians],
        fps=float(export.fps),
        radius=float(export.video_radius or run.asset.radius),
        background=tuple(run.asset.background),
        stage=run.stage,
        step=int(run.state.get("step", 0)),
        iterations=int(run.state.get("iterations", run.state.get("step", 0))),
        complete=bool(run.state.get("complete")),
        signature=signature,
        frames_gaussians=[f.to("cpu") for f in gaussians],
        mesh_config=(export.mesh_resolution, export.mesh_threshold),
    )
