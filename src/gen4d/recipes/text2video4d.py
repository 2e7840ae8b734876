"""``text2video4d``: text -> video -> 4D, with or without a MotionDirector motion LoRA, in one resumable run.

Stages, chained in one run directory:
  0. ``video`` - the text-to-video model samples the prompt (plus ``video.prompt_suffix``, ", on a white
     background" by default, so that the subject is easy to cut out) with the sampler of ``gen4d motion sample``
     (:func:`gen4d.recipes.motion_sample.generate_video`: motion LoRA, noise prior, DDIM); the frames are written
     to ``stages/video/raw/`` with ``video.mp4`` / ``video.gif`` beside them, then the subject is segmented
     (``segmenter``) and recentred on a square canvas (:func:`gen4d.data.preprocess.load_video_frames`: one box
     for all frames, so the motion is kept) into ``stages/video/frames/frame_XXXX.png`` (RGBA). An artifact stage
     (:class:`gen4d.training.loop.ArtifactStage`): it runs once, a rerun reads the frames back;
  1. DreamGaussian4D video -> 4D (:func:`gen4d.recipes.dg4d.run_dg4d` in video mode, its input the frames of
     stage 0): ``stages/driving``, ``stages/static``, ``stages/dynamic``, then the exports in ``exports/``
     (per-frame PLY and meshes, animated GLB, orbit video); any frame count.

``config.yaml`` holds this recipe's configuration: ``video`` (a :class:`MotionSampleConfig`), ``segmenter`` and
``dg4d`` (a :class:`DG4DConfig`, with ``mode=video`` and ``input`` set to ``DIR/stages/video/frames``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import Gen4DError
from ..data.preprocess import REMBG_INSTALL, load_video_frames, rembg_model_problem, resolve_segmenter, save_rgba_png
from ..devices import resolve_device
from ..guidance.priors import PriorFactory, build_prior
from ..models.preflight import ModelRequirement, PackageRequirement, Requirement
from ..runs import RunDir
from ..training.loop import ArtifactStage, run_artifact
from . import dg4d
from .dg4d import DG4DConfig, run_dg4d
from .motion_sample import (
    MotionSampleConfig,
    check_config,
    generate_video,
    write_video_outputs,
)
from .recipe import Option, Recipe, merge_nested

WHITE_BACKGROUND = ", on a white background"


@dataclass
class Text2Video4DConfig:
    """Everything ``gen4d text --recipe text2video4d`` does; every field can be set as ``key=value``."""

    video: MotionSampleConfig = field(default_factory=lambda: MotionSampleConfig(prompt_suffix=WHITE_BACKGROUND))
    """The text -> video stage: prompt, model, motion LoRA (``video.motion``), noise prior, sampling settings."""
    segmenter: str = "auto"
    """What cuts the subject out of the generated frames: rembg (optional dependency) | plain (the background
    colour estimated from the frame border; for plain backgrounds, no dependency) | auto (rembg when installed,
    else plain; the choice is logged and written to metrics.json)."""
    dg4d: DG4DConfig = field(default_factory=lambda: DG4DConfig(mode="video"))
    """The video -> 4D stages (DreamGaussian4D); ``mode`` and ``input`` are set by the recipe."""


PRESETS: dict[str, list[str]] = {name: [f"dg4d.{o}" for o in options] for name, options in dg4d.PRESETS.items()}
"""DreamGaussian4D's presets, applied to the nested ``dg4d`` configuration."""


def iters_overrides(iters: int) -> dict:
    """``--iters N``: split equally between ``dg4d.static`` and ``dg4d.dynamic``, as ``gen4d video --iters`` does."""
    if iters < 2:
        raise Gen4DError(f"--iters must be at least 2 (static and dynamic steps), got {iters}")
    return {"dg4d": dg4d.iters_overrides(iters)}


def build_config(preset: str, overrides: list[str], base: dict | None = None) -> Text2Video4DConfig:
    """Defaults <- preset <- ``base`` <- ``key=value`` overrides.

    ``base`` is a nested dict of command-line values; three top-level shortcuts are accepted as the command line
    gives them: ``seed`` and ``device`` (copied to ``video`` and ``dg4d``) and ``iters``.
    """
    base = json.loads(json.dumps(base or {}))  # a deep copy
    flags = {k: base.pop(k, None) for k in ("seed", "device", "iters")}
    return RECIPE.build_config(preset, overrides, merge_nested(RECIPE.command_base(**flags), base))


def check(cfg: Text2Video4DConfig) -> None:
    """Every check that needs no model (nothing is written)."""
    check_config(cfg.video)
    resolve_segmenter(cfg.segmenter)
    resolve_device(cfg.dg4d.device)


def requirements(cfg: Text2Video4DConfig) -> list[Requirement]:
    """The text-to-video model, DreamGaussian4D's video-mode needs, and rembg when the segmenter asks for it."""
    needs: list[Requirement] = [ModelRequirement(cfg.video.model, "the text-to-video stage")]
    if resolve_segmenter(cfg.segmenter) == "rembg":
        needs.append(PackageRequirement("rembg", REMBG_INSTALL, "cutting out the generated video (or segmenter=plain)", rembg_model_problem))
    return needs + dg4d.requirements(dataclasses.replace(cfg.dg4d, mode="video"))


def video_stage(cfg: Text2Video4DConfig, run: RunDir, quiet: bool = False) -> ArtifactStage:
    """Stage 0 (module docstring)."""

    def make(stage: Path) -> dict:
        segmenter = resolve_segmenter(cfg.segmenter)
        run.log(f"stage video: generating ({cfg.video.num_frames} frames, segmenter {segmenter})")
        sample, info = generate_video(cfg.video, resolve_device(cfg.video.device), quiet=quiet, log=run.log)
        written = write_video_outputs(sample.frames, stage, cfg.video.fps, frames_folder="raw")
        try:
            frames = load_video_frames(
                stage / "raw", size=cfg.dg4d.size, border_ratio=cfg.dg4d.border_ratio, remove_background=True, segmenter=segmenter
            )
        except Gen4DError as e:
            raise Gen4DError(
                f"{e}; the {segmenter} segmenter finds no subject in {stage / 'video.mp4'}: try another --seed, a prompt "
                "on a plain background, or segmenter=rembg"
            ) from None
        for i, frame in enumerate(frames):
            save_rgba_png(stage / "frames" / f"frame_{i:04d}.png", frame)
        return {**info, "segmenter": segmenter, "frames": len(frames), "video": written["mp4"][0], "gif": written["gif"][0]}

    return ArtifactStage("video", make)


def run_text2video4d(
    cfg: Text2Video4DConfig, out: str | Path, command: str = "gen4d text", quiet: bool = False, stop_after_step: int | None = None,
    priors: PriorFactory = build_prior,
) -> dict:
    """Text -> video -> 4D Gaussians -> exports in the run directory ``out`` (module docstring).

    Validates the options before touching ``out``. ``stop_after_step``: for tests, stop right after the DG4D
    checkpoint at that global optimisation step (returns ``{}``), as a kill would. Returns the metrics written to
    ``out/metrics.json``: DreamGaussian4D's, plus ``video`` (the video stage's summary).
    """
    check(cfg)
    root = Path(out).resolve()
    # The 4D stages read the frames of the video stage; the resolved path is part of config.yaml.
    cfg = dataclasses.replace(cfg, dg4d=dataclasses.replace(cfg.dg4d, mode="video", input=str(root / "stages" / "video" / "frames")))
    run = RunDir(root)
    run.prepare(cfg, command)
    video = run_artifact(run, video_stage(cfg, run, quiet=quiet))
    metrics = run_dg4d(cfg.dg4d, root, command=command, quiet=quiet, stop_after_step=stop_after_step, run=run, priors=priors)
    if not metrics:  # stopped on request (tests)
        return {}
    metrics["video"] = video
    metrics["exports"]["video"] = [video["video"], video["gif"]]
    run.write_metrics(metrics)
    return metrics


RECIPE = Recipe(
    name="text2video4d",
    commands=("text",),
    description="text -> video (ZeroScope, optionally with a MotionDirector LoRA) -> cut-out -> DreamGaussian4D video -> 4D",
    config=Text2Video4DConfig,
    presets=PRESETS,
    run=run_text2video4d,
    input_key="video.prompt",
    input_is_path=False,
    options=(Option("--motion", "video.motion", "a `gen4d motion train` run folder: generate the video with its motion", path=True),),
    iters=iters_overrides,
    check=check,
    shared_keys={"seed": ("video.seed", "dg4d.seed"), "device": ("video.device", "dg4d.device")},
    requirements=requirements,
    headline=dg4d.RECIPE.headline,
)
