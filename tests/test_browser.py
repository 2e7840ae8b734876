"""In a real browser (Debian's Chromium, headless, driven by Playwright): ``gen4d app --models tiny`` takes an image
upload, runs the job and shows the result video and the 3D views; ``gen4d view`` moves through time with its
slider; the html export plays offline. Screenshots go to the test's folder, and to ``$GEN4D_SCREENSHOTS`` when set
(``GEN4D_SCREENSHOTS=docs/img`` remakes the README's)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_app import APP_SETTINGS
from test_dg4d import disc
from test_reconstruct import TINY as RECONSTRUCT_TINY
from test_viewer import _free_port

from gen4d.app.jobs import CLI_WITH_CTRL_C
from gen4d.cli import main
from gen4d.data.synthetic import write_synthetic_scene

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
"""No GPU in CI: WebGL through SwiftShader."""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return ""


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if not path:
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver); browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[app]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _start(args: list[str], cwd: Path, ready: str, timeout: float = 120.0) -> tuple[subprocess.Popen, Path]:
    """Start ``gen4d ARGS``; returns once it printed a line starting with ``ready``."""
    log = cwd / f"console-{args[0]}.txt"
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_CTRL_C, *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith(ready) for line in log.read_text().splitlines()):
            return proc, log
        if proc.poll() is not None:
            raise AssertionError(f"gen4d {args[0]} ended: {log.read_text()}")
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"gen4d {args[0]} did not start: {log.read_text()}")


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _screenshot(page, tmp_path: Path, name: str, full_page: bool = False) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("GEN4D_SCREENSHOTS"):
        target = Path(os.environ["GEN4D_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


@pytest.mark.slow
def test_app_runs_an_uploaded_image_to_a_video_and_3d_views(browser, tmp_path):
    image = tmp_path / "corgi.png"
    disc(24, 24).save(image)
    port = _free_port()
    proc, console = _start(["app", "--models", "tiny", "--runs", str(tmp_path / "runs"), "--port", str(port)], tmp_path, "gen4d app:")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"http://127.0.0.1:{port}")
        tab = page.locator("#tab-image")
        tab.locator(".gen4d-input input[type=file]").set_input_files(str(image))
        tab.get_by_text("settings", exact=True).click()
        tab.locator(".gen4d-settings textarea").fill(APP_SETTINGS)
        tab.locator("button.gen4d-run").click()
        status = tab.locator(".gen4d-status [data-testid=markdown]")
        status.get_by_text("stage", exact=False).first.wait_for(timeout=120_000)  # progress is streamed
        status.get_by_text(": done", exact=False).wait_for(timeout=420_000)
        video = tab.locator("video").first
        video.wait_for(timeout=30_000)
        assert "orbit.mp4" in (video.get_attribute("src") or "")
        page.wait_for_function("() => document.querySelector('#tab-image video').readyState >= 1", timeout=30_000)
        # the animated mesh and the splats, each drawn in its own canvas
        page.wait_for_function("() => document.querySelectorAll('#tab-image [data-testid=model3d] canvas').length >= 2", timeout=90_000)
        assert "300 Gaussians" in status.inner_text()
        page.wait_for_timeout(8000)  # let the 3D views draw (software WebGL)
        shot = _screenshot(page, tmp_path, "app.png", full_page=True)
        assert shot.stat().st_size > 10_000
        assert tab.locator("a[download='player.html']").count() == 1  # among the downloads
    finally:
        code = _stop(proc)
    lines = [line for line in console.read_text().splitlines() if line.strip()]
    assert lines[0].startswith(f"gen4d app: http://127.0.0.1:{port}") and len(lines) == 1, lines  # gradio stays quiet
    assert code in (0, 130)
    assert len(list((tmp_path / "runs").glob("*/run/exports/animated.glb"))) == 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    write_synthetic_scene("jumping_jacks", root / "scene", resolution=32, train_views=6, train_times=5, test_views=2, seed=0)
    out = root / "run"
    assert main(["reconstruct", str(root / "scene"), "--out", str(out), "--quiet", *RECONSTRUCT_TINY,
                 "export.frames=5", "export.formats=[ply,glb]"]) == 0
    return out


@pytest.mark.slow
def test_view_moves_through_time_with_its_slider(browser, finished_run, tmp_path):
    port = _free_port()
    proc, console = _start(["view", str(finished_run), "--port", str(port)], tmp_path, "gen4d view:")
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(f"http://127.0.0.1:{port}")
        page.get_by_text("frame 1 of 5").wait_for(timeout=60_000)
        page.locator("canvas").first.wait_for(timeout=30_000)
        slider = page.locator("[role=slider]").first
        assert slider.get_attribute("aria-valuemax") == "4"
        slider.focus()
        page.keyboard.press("ArrowRight")
        page.get_by_text("frame 2 of 5, t = 0.250").wait_for(timeout=10_000)
        page.keyboard.press("End")
        page.get_by_text("frame 5 of 5, t = 1.000").wait_for(timeout=10_000)
        page.get_by_text("input view").click()
        page.wait_for_timeout(1500)
        _screenshot(page, tmp_path, "view.png")
    finally:
        code = _stop(proc)
    lines = [line for line in console.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"gen4d view: http://127.0.0.1:{port}"), lines
    assert code == 0


def test_html_export_plays_offline(browser, finished_run, tmp_path):
    assert main(["export", str(finished_run), "--format", "html", "--quiet"]) == 0
    context = browser.new_context(offline=True)
    page = context.new_page()
    page.goto((finished_run / "exports" / "player.html").as_uri())
    page.wait_for_function("() => window.gen4dPlayer !== undefined", timeout=10_000)
    assert page.inner_text("#error") == ""
    assert page.evaluate("window.gen4dPlayer.frames") == 5
    page.click("#play")  # pause
    page.fill("#time", "1000")
    page.dispatch_event("#time", "input")
    assert page.inner_text("#label").startswith("frame 5 / 5")
    # the canvas is not blank: some pixels differ from the white background
    drawn = page.evaluate("""() => { const c = document.getElementById('view');
        const g = c.getContext('webgl', {preserveDrawingBuffer: true}); window.gen4dPlayer.show(window.gen4dPlayer.duration);
        const px = new Uint8Array(c.width * c.height * 4); g.readPixels(0, 0, c.width, c.height, g.RGBA, g.UNSIGNED_BYTE, px);
        let n = 0; for (let i = 0; i < px.length; i += 4) if (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250) n++; return n; }""")
    assert drawn > 100
    context.close()
