"""Exports of a fitted 4D scene: per-frame 3DGS PLY, per-frame meshes, one animated GLB, an orbit video."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from .. import Gen4DError
from ..cameras import frame_times, orbit_cameras
from ..render.mesh import TexturedMesh
from ..scene import Scene4D
from .animated_glb import write_animated_glb
from .html import write_player_html
from .images import to_uint8
from .mesh import Mesh, extract_mesh, save_glb, save_obj, skin_to_gaussians
from .ply import save_inria_ply
from .texture import save_textured_sequence, textured_mesh
from .video import write_video

FORMATS = ("ply", "mesh", "glb", "textured", "mp4")
"""The formats a run exports by default."""
ON_REQUEST = ("html", "nodes")
"""Formats written only when asked for (``gen4d export --format html``): a self-contained page playing the animated GLB;
nodes (``nodes.json``, the control nodes' positions per frame), which a run with a node deformation field also
writes with its default exports."""


@dataclass
class ExportConfig:
    """What to export and how."""

    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    """Any of: ply (per-frame 3DGS PLY), mesh (per-frame OBJ + GLB, vertex colours), glb (one animated GLB, vertex
    colours), textured (one UV-textured mesh moved per frame: OBJ + MTL + PNG per frame and an animated GLB with the
    texture), mp4 (orbit video)."""
    frames: int = 0
    """Output frames (any count; times are interpolated). 0: the number of distinct training times."""
    fps: float = 12.0
    """Frames per second of the animated GLB and of the orbit video."""
    mesh_resolution: int = 96
    """Density grid points per axis for marching cubes."""
    mesh_threshold: float = 0.5
    """Density iso-level of the mesh surface."""
    texture_size: int = 1024
    """Texels per side of the textured mesh's atlas (DreamGaussian4D's 1024) when the asset has no trained texture."""
    video_size: int = 256
    """Orbit video width and height in pixels."""
    video_frames: int = 48
    """Frames of the orbit video (one full turn; time runs 0 -> 1 over the turn)."""
    video_elevation: float = 20.0
    """Orbit elevation in degrees."""
    video_radius: float = 0.0
    """Orbit radius; 0: the mean distance of the training cameras from the origin."""
    video_fov_deg: float = 40.0
    """Orbit horizontal field of view."""


@torch.no_grad()
def export_scene(
    scene: Scene4D,
    out_dir: Path,
    config: ExportConfig,
    background: tuple[float, float, float],
    default_frames: int,
    default_radius: float,
    formats: list[str] | None = None,
    quiet: bool = False,
) -> dict[str, list[str]]:
    """Write the requested exports under ``out_dir``; returns {format: [paths]}."""
    full = formats is None  # the run's own exports (its export settings), not a re-export of chosen formats
    formats = list(formats if formats is not None else config.formats)
    unknown = sorted(set(formats) - set(FORMATS) - set(ON_REQUEST))
    if unknown:
        raise Gen4DError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS + ON_REQUEST)}")
    node_field = hasattr(scene.deformation, "node_trajectories")
    if "nodes" in formats and not node_field:
        raise Gen4DError("the nodes export needs a scene with a node deformation field (deformation.type=nodes or bases)")
    want_nodes = node_field and ("nodes" in formats or full)
    n_frames = config.frames or default_frames
    times = frame_times(n_frames)
    frames = [scene.frame_at(float(t)).detach() for t in times]
    written: dict[str, list[str]] = {}
    first: list = []  # the first frame's surface, extracted once for every format that uses it

    def first_mesh():
        if not first:
            first.append(extract_mesh(frames[0], resolution=config.mesh_resolution, threshold=config.mesh_threshold))
        return first[0]

    if "ply" in formats:
        paths = []
        for i, f in enumerate(track(frames, description="export ply", disable=quiet)):
            p = out_dir / "ply" / f"frame_{i:04d}.ply"
            save_inria_ply(p, f)
            paths.append(str(p))
        written["ply"] = paths
    if "mesh" in formats:
        paths = []
        for i, f in enumerate(track(frames, description="export meshes", disable=quiet)):
            mesh = first_mesh() if i == 0 else extract_mesh(f, resolution=config.mesh_resolution, threshold=config.mesh_threshold)
            for ext, save in (("obj", save_obj), ("glb", save_glb)):
                p = out_dir / "mesh" / f"frame_{i:04d}.{ext}"
                save(p, mesh)
                paths.append(str(p))
        written["mesh"] = paths
    if "glb" in formats or "html" in formats:
        base, verts = animated_mesh(frames, first_mesh())
        p = out_dir / "animated.glb"
        if "glb" in formats:
            write_animated_glb(p, verts, base.faces, base.colors, fps=config.fps)
            written["glb"] = [str(p)]
        if "html" in formats:
            with tempfile.TemporaryDirectory() as tmp:
                glb = Path(tmp) / "animated.glb"
                write_animated_glb(glb, verts, base.faces, base.colors, fps=config.fps)
                page = out_dir / "player.html"
                write_player_html(page, glb.read_bytes(), title=out_dir.parent.name, fps=config.fps, background=background)
            written["html"] = [str(page)]
    if "textured" in formats:
        # The asset's own textured mesh (trained by DreamGaussian4D's stage III) or one baked from the Gaussians now;
        # one topology, carried along by its nearest Gaussians as the animated GLB's mesh
        tm = scene.mesh
        if tm is None:
            tm = textured_mesh(first_mesh(), config.texture_size)
        tm = TexturedMesh.from_tensors({k: v.detach().cpu() for k, v in tm.tensors().items()})  # a CPU copy
        means = torch.stack([f.means.cpu() for f in frames])
        verts = np.asarray(skin_to_gaussians(tm.vertices, frames[0].means.cpu(), means))
        folder = out_dir / "textured"
        paths = save_textured_sequence(folder, tm, verts)
        (png,) = [q for q in paths if q.endswith(".png")]  # the material's texture, as written: encoded once
        p = folder / "animated.glb"
        write_animated_glb(p, verts, tm.faces.numpy(), None, fps=config.fps, uvs=tm.uvs.numpy(), texture_png=Path(png).read_bytes())
        written["textured"] = [*paths, str(p)]
    if want_nodes:
        p = out_dir / "nodes.json"
        write_node_trajectories(p, scene.deformation, times)
        written["nodes"] = [str(p)]
    if "mp4" in formats:
        p = out_dir / "orbit.mp4"
        write_video(p, render_orbit_video(scene, config, background, default_radius, quiet), fps=config.fps)
        written["mp4"] = [str(p)]
    return written


def write_node_trajectories(path: Path, field, times: torch.Tensor) -> None:
    """``nodes.json``: ``times [T]``, ``radii [K]`` and ``positions [T][K][3]`` of a node deformation field's control
    nodes (world units, rounded to 1e-5); for motion bases, the pivots' positions (their weights are a field of
    position, not radii, so ``radii`` is left out)."""
    positions = field.node_trajectories(times.to(field.positions.device)).double().cpu()
    doc = {"times": [round(float(t), 6) for t in times]}
    if field.radial:
        doc["radii"] = np.round(field.log_radii.detach().double().exp().cpu().numpy(), 5).tolist()
    doc["positions"] = np.round(positions.numpy(), 5).tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")))


def animated_mesh(frames: list, base: Mesh) -> tuple[Mesh, np.ndarray]:
    """One fixed-topology mesh (``base``, the first frame's surface) carried along by its nearest Gaussians:
    ``(base, vertices [T, V, 3])`` for the frames' Gaussians (the animated GLB, ``gen4d view``'s mesh)."""
    means = torch.stack([f.means for f in frames])
    return base, np.asarray(skin_to_gaussians(torch.as_tensor(base.vertices), frames[0].means, means))


@torch.no_grad()
def render_orbit_video(
    scene: Scene4D, config: ExportConfig, background: tuple[float, float, float], default_radius: float, quiet: bool = True
) -> np.ndarray:
    """``[F, S, S, 3]`` uint8: one turn around the object while time runs from 0 to 1."""
    n = config.video_frames
    az = torch.linspace(0.0, 360.0, n + 1)[:-1]
    times = frame_times(n).float()
    cams = orbit_cameras(
        az, config.video_elevation, config.video_radius or default_radius, np.deg2rad(config.video_fov_deg),
        config.video_size, config.video_size, times,
    )
    device = scene.gaussians.params["means"].device
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    frames = []
    for i in track(range(n), description="render orbit video", disable=quiet):
        out = scene.render(cams[i].to(device), background=bg)
        frames.append(to_uint8(out.rgb[0]))
    return np.stack(frames)
