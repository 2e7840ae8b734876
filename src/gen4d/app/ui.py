"""The gradio page of ``gen4d app``: one tab per command of the recipe registry (its recipes and their presets, so a
new recipe appears without changes here), and a Runs tab to reopen or resume a job."""

from __future__ import annotations

import contextlib
import io
import os
import time

from ..recipes import RECIPES, recipes_for
from .handlers import open_job, resume_job, start_job
from .jobs import ARCHIVE_TYPES, IMAGE_TYPES, INPUT_KINDS, VIDEO_TYPES, JobRunner

TITLES = {
    "image": "Image → 4D", "video": "Video → 4D", "text": "Text → 4D", "reconstruct": "Multi-view video → 4D",
    "motion train": "MotionDirector: train", "motion sample": "MotionDirector: sample",
}
INPUT_LABELS = {
    "image": "image (RGBA, or RGB on a plain background)", "video": "video", "text": "prompt",
    "archive": "D-NeRF scene folder, zipped (transforms_train.json, transforms_test.json, images)",
}
MOTION_RECIPE = "motiondirector"
JOB_CONCURRENCY = "gen4d-job"
"""Every event that runs a job shares this queue, one at a time: one job per GPU."""


def _commands() -> list[str]:
    seen: list[str] = []
    for recipe in RECIPES.values():
        for command in recipe.commands:
            if command not in seen:
                seen.append(command)
    order = list(TITLES)
    return sorted(seen, key=lambda c: order.index(c) if c in order else len(order))


def _stream(views):
    """(status, preview, results) for a stream of views; ``results`` (video, mesh, splats, downloads) only with the
    last. The page then shows the results in a separate, non-streaming step (:func:`_show_results`): gradio's Model3D
    did not draw a GLB that arrived as a streamed update (it did from a plain one)."""
    import gradio as gr

    for view in views:
        values = tuple(view)[:6]
        yield values[0], values[1], (gr.skip() if view.running else values[2:])


def _show_results(results):
    import gradio as gr

    return tuple(results) if isinstance(results, (tuple, list)) else (gr.skip(),) * 4


def build_app(runner: JobRunner):
    """The gradio Blocks of the app (not launched)."""
    import gradio as gr

    def motion_runs() -> list[str]:
        return [str(j.run_dir) for j in runner.jobs() if j.recipe == MOTION_RECIPE and (j.run_dir / "lora").is_dir()]

    def outputs_panel():
        status = gr.Markdown("", elem_classes=["gen4d-status"])
        with gr.Row():
            preview = gr.Image(label="preview", type="filepath", interactive=False, height=256)
            video = gr.Video(label="result video", interactive=False, autoplay=True, loop=True, height=256)
        with gr.Row():
            model = gr.Model3D(label="animated mesh (GLB)", interactive=False, height=320)
            splats = gr.Model3D(label="Gaussians, first frame (PLY)", interactive=False, height=320)
        downloads = gr.File(label="downloads", file_count="multiple", interactive=False)
        return [status, preview, video, model, splats, downloads]

    with gr.Blocks(title="gen4d") as demo:
        gr.Markdown("# gen4d\nText, an image or a video to a 4D asset. One job runs at a time; each runs in its own "
                    f"folder under `{runner.runs}` and can be resumed from the Runs tab."
                    + ("  \n**Models: tiny** (random weights: checks the pipeline, the output is meaningless)." if runner.models == "tiny" else ""))
        with gr.Tabs():
            for command in _commands():
                recipes = recipes_for(command)
                kind = INPUT_KINDS.get(command)
                if kind is None:
                    continue
                with gr.Tab(TITLES.get(command, command), elem_id=f"tab-{command.replace(' ', '-')}"):
                    with gr.Row():
                        with gr.Column(scale=1):
                            recipe = gr.Dropdown([r.name for r in recipes], value=recipes[0].name, label="recipe",
                                                 info=recipes[0].description)
                            preset = gr.Dropdown(list(recipes[0].presets), value=recipes[0].default_preset, label="preset")
                            if kind == "text":
                                source = gr.Textbox(label=INPUT_LABELS[kind], lines=2, elem_classes=["gen4d-input"])
                            else:
                                types = {"image": IMAGE_TYPES, "video": VIDEO_TYPES, "archive": ARCHIVE_TYPES}[kind]
                                source = gr.File(label=INPUT_LABELS[kind], file_types=list(types), type="filepath",
                                                 elem_classes=["gen4d-input"])
                            option_flags, option_inputs = [], []
                            for r in recipes:
                                for o in r.options:
                                    if o.flag in option_flags:
                                        continue
                                    option_flags.append(o.flag)
                                    if o.path and o.key.endswith("motion"):
                                        option_inputs.append(gr.Dropdown(motion_runs(), value=None, label=f"{o.flag}: {o.help}",
                                                                         allow_custom_value=False))
                                    elif o.path:
                                        option_inputs.append(gr.File(label=f"{o.flag} (optional): {o.help}", type="filepath"))
                                    else:
                                        option_inputs.append(gr.Textbox(label=f"{o.flag} (optional): {o.help}"))
                            with gr.Accordion("settings", open=False):
                                iters = gr.Textbox(label="steps (--iters; empty: the preset's)", value="")
                                seed = gr.Textbox(label="seed (empty: the recipe's)", value="")
                                settings = gr.Textbox(label="key=value settings, one per line (as on the command line)", lines=4,
                                                      elem_classes=["gen4d-settings"])
                            with gr.Row():
                                run = gr.Button("Run", variant="primary", elem_classes=["gen4d-run"])
                                stop = gr.Button("Stop", variant="stop")
                        with gr.Column(scale=2):
                            outputs = outputs_panel()

                    def on_recipe(name):
                        r = RECIPES[name]
                        return gr.update(choices=list(r.presets), value=r.default_preset), gr.update(info=r.description)

                    recipe.change(on_recipe, recipe, [preset, recipe], queue=False)

                    def run_fn(recipe_name, preset_name, source_value, iters_value, seed_value, settings_value, *option_values,
                               _command=command, _flags=tuple(option_flags)):
                        options = dict(zip(_flags, option_values))
                        yield from _stream(start_job(runner, _command, recipe_name, preset_name, source_value, iters_value,
                                                     seed_value, settings_value, options))

                    results = gr.State(None)
                    run.click(run_fn, [recipe, preset, source, iters, seed, settings, *option_inputs], [*outputs[:2], results],
                              concurrency_limit=1, concurrency_id=JOB_CONCURRENCY).then(_show_results, results, outputs[2:])
                    stop.click(lambda: runner.stop(), None, None, queue=False)

            with gr.Tab("Runs", elem_id="tab-runs"):
                with gr.Row():
                    with gr.Column(scale=1):
                        jobs = gr.Dropdown([j.name for j in runner.jobs()], label="job", value=None)
                        refresh = gr.Button("Refresh list")
                        show = gr.Button("Show results")
                        resume = gr.Button("Resume", variant="primary")
                        stop = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=2):
                        outputs = outputs_panel()
                refresh.click(lambda: gr.update(choices=[j.name for j in runner.jobs()]), None, jobs, queue=False)
                show.click(lambda name: tuple(open_job(runner, name))[:6], jobs, outputs)

                def resume_fn(name):
                    yield from _stream(resume_job(runner, name))

                results = gr.State(None)
                resume.click(resume_fn, jobs, [*outputs[:2], results], concurrency_limit=1,
                             concurrency_id=JOB_CONCURRENCY).then(_show_results, results, outputs[2:])
                stop.click(lambda: runner.stop(), None, None, queue=False)
    return demo


def launch(runs: str, host: str = "127.0.0.1", port: int = 7860, models: str = "real", block: bool = True):
    """``gen4d app``: serve the page (binds ``host``, 127.0.0.1 by default); gradio's own output goes to
    ``RUNS/app-log.txt``. Returns the Blocks when ``block`` is False."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..console import attach_run_log, capture_library_output

    capture_library_output()
    runner = JobRunner(runs, models)
    attach_run_log(runner.runs / "app-log.txt")
    demo = build_app(runner)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, quiet=True, prevent_thread_lock=True, allowed_paths=[str(runner.runs)],
                show_error=True, footer_links=[])
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"gen4d app: http://{shown}:{port}  (jobs in {runner.runs}; Ctrl-C to stop)", flush=True)
    if not block:
        return demo
    try:
        while True:  # not demo.block_thread(): it prints a message of its own on Ctrl-C
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()
        with contextlib.redirect_stdout(io.StringIO()):  # gradio says it is closing
            demo.close()
    return None
