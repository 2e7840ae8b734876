"""``gen4d view DIR``: a viser server showing a run's 4D Gaussians (viser's Gaussian splats) or its animated mesh.

Panel: a frame slider and play / pause at the run's frame count and fps, Gaussians / mesh, camera presets (the
input view: azimuth 0, elevation 0 at the run's camera distance; an orbit at 20° elevation), and a status line.
Every frame is sent once as its own scene node and the slider only switches which one is visible, so playback
does not resend Gaussians. While the run trains, a watcher reloads the scene whenever a checkpoint is written.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time

import numpy as np

from .. import Gen4DError
from ..cameras import orbit_eye
from .scene import ViewerScene, build_viewer_scene, checkpoint_signature

SHOW = ("Gaussians", "mesh")


def _eye(azimuth: float, elevation: float, radius: float) -> np.ndarray:
    return orbit_eye(azimuth, elevation, radius).numpy()


class RunViewer:
    """The viewer of one run directory on a viser server (``server``); ``close()`` stops it."""

    def __init__(self, run_dir: str, host: str = "127.0.0.1", port: int = 8080, frames: int | None = None,
                 device: str | None = None, refresh_seconds: float = 2.0):
        import viser

        self.run_dir, self.frames, self.device = run_dir, frames, device
        self.scene: ViewerScene = build_viewer_scene(run_dir, frames, device)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._frame_nodes: list = []
        self._mesh_nodes: list = []
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints a banner of its own; gen4d prints the address
            self.server = viser.ViserServer(host=host, port=port, label="gen4d", verbose=False)
        self.server.scene.set_up_direction("+z")
        self.server.initial_camera.position = tuple(_eye(30.0, 20.0, self.scene.radius))
        self.server.initial_camera.look_at = (0.0, 0.0, 0.0)
        gui = self.server.gui
        self.status = gui.add_markdown(self.scene.status())
        self.frame_label = gui.add_markdown("")
        self.time_slider = gui.add_slider("frame", min=0, max=max(self.scene.num_frames - 1, 1), step=1, initial_value=0)
        self.play = gui.add_checkbox("play", initial_value=False)
        self.fps = gui.add_number("fps", initial_value=self.scene.fps, min=0.5, max=120.0, step=0.5)
        self.show = gui.add_dropdown("show", SHOW, initial_value=SHOW[0])
        self.input_view = gui.add_button("input view")
        self.orbit = gui.add_checkbox("orbit", initial_value=False)
        self.time_slider.on_update(lambda _: self._show_frame())
        self.show.on_update(lambda _: self._rebuild_nodes())
        self.input_view.on_click(lambda event: self._input_view([event.client] if event.client else None))
        self._rebuild_nodes()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._animate, self._watch)]
        self.refresh_seconds = refresh_seconds
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server.get_port()}"

    @property
    def frame(self) -> int:
        return int(self.time_slider.value)

    # ------------------------------------------------------------------ scene nodes
    def _rebuild_nodes(self) -> None:
        with self._lock:
            for node in self._frame_nodes + self._mesh_nodes:
                node.remove()
            self._frame_nodes, self._mesh_nodes = [], []
            s = self.scene
            if self.show.value == "mesh":
                self.status.content = s.status() + "  \nmaking the mesh ..."
                try:
                    base, verts = s.mesh()
                except Gen4DError as e:  # e.g. no surface at the export's density threshold
                    self.status.content = f"{s.status()}  \nno mesh: {e}"
                    self.show.value = SHOW[0]
                    return
                for i in range(s.num_frames):
                    mesh = base.to_trimesh()
                    mesh.vertices = verts[i]
                    self._mesh_nodes.append(self.server.scene.add_mesh_trimesh(f"/mesh/frame_{i:04d}", mesh, visible=False))
            else:
                for i, sp in enumerate(s.splats):
                    self._frame_nodes.append(self.server.scene.add_gaussian_splats(
                        f"/gaussians/frame_{i:04d}", centers=sp.centers, covariances=sp.covariances, rgbs=sp.rgbs,
                        opacities=sp.opacities, visible=False))
            self.status.content = s.status()
            self.time_slider.max = max(s.num_frames - 1, 1)
            if self.time_slider.value > s.num_frames - 1:
                self.time_slider.value = s.num_frames - 1
            self._show_frame()

    def _show_frame(self) -> None:
        with self._lock:
            i = min(self.frame, self.scene.num_frames - 1)
            for nodes in (self._frame_nodes, self._mesh_nodes):
                for j, node in enumerate(nodes):
                    node.visible = j == i
            t = i / max(self.scene.num_frames - 1, 1)
            self.frame_label.content = f"frame {i + 1} of {self.scene.num_frames}, t = {t:.3f}"

    # ------------------------------------------------------------------ cameras
    def _input_view(self, clients=None) -> None:
        for client in clients or self.server.get_clients().values():
            with client.atomic():
                client.camera.up_direction = (0.0, 0.0, 1.0)
                client.camera.position = tuple(_eye(0.0, 0.0, self.scene.radius))
                client.camera.look_at = (0.0, 0.0, 0.0)

    def _animate(self) -> None:
        """Play (advance the slider at the fps) and orbit (turn every client's camera), 60 times a second."""
        last_frame, azimuth = time.monotonic(), 0.0
        while not self._stop.wait(1 / 60):
            now = time.monotonic()
            if self.play.value and now - last_frame >= 1.0 / max(float(self.fps.value), 0.5):
                last_frame = now
                self.time_slider.value = (self.frame + 1) % self.scene.num_frames
            if self.orbit.value:
                azimuth = (azimuth + 0.5) % 360.0
                for client in self.server.get_clients().values():
                    client.camera.up_direction = (0.0, 0.0, 1.0)
                    client.camera.position = tuple(_eye(azimuth, 20.0, self.scene.radius))
                    client.camera.look_at = (0.0, 0.0, 0.0)

    def _watch(self) -> None:
        """Reload the scene when the run writes a checkpoint (a run still training)."""
        while not self._stop.wait(self.refresh_seconds):
            if checkpoint_signature(self.run_dir) == self.scene.signature:
                continue
            try:
                scene = build_viewer_scene(self.run_dir, self.frames, self.device)
            except (Gen4DError, OSError, RuntimeError):  # a checkpoint being replaced: try again next time
                continue
            with self._lock:
                self.scene = scene
                self._rebuild_nodes()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        with contextlib.redirect_stdout(io.StringIO()):  # viser says it stopped
            self.server.stop()


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8080, frames: int | None = None, device: str | None = None) -> None:
    """``gen4d view``: start the viewer, print its address, and serve until interrupted (Ctrl-C)."""
    viewer = RunViewer(run_dir, host=host, port=port, frames=frames, device=device)
    print(f"gen4d view: {viewer.url}  ({viewer.scene.status().replace('**', '')}; Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
