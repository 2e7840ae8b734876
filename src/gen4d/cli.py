"""The ``gen4d`` command line.

    gen4d demo --out DIR                 synthetic multi-view 4D scene -> 4D Gaussians -> metrics + exports
    gen4d reconstruct DATA --out DIR     D-NeRF-format multi-view video -> 4D Gaussians -> metrics + exports
    gen4d image IMAGE --out DIR          image -> 4D (DreamGaussian4D)
    gen4d video VIDEO --out DIR          monocular video -> 4D (DreamGaussian4D)
    gen4d text "PROMPT" --out DIR        text -> video (optionally with a motion LoRA) -> 4D
    gen4d motion train VIDEO --out DIR   MotionDirector: learn a motion LoRA from reference video(s)
    gen4d motion sample "PROMPT" --out DIR [--motion DIR]   text -> video with a learned motion
    gen4d export DIR --format glb|obj|ply|mp4   (re-)export a finished run
    gen4d eval DIR --data C4D [--object NAME]   render a run at the Consistent4D cameras and score it
    gen4d eval --renders PRED --data GT  score renders laid out as eval_<k>/<i>.png against ground truth

Generating commands take ``--preset``, ``--iters``, ``--seed``, ``--device`` and ``key=value`` overrides of any
configuration field (see ``DIR/config.yaml`` of a run for the full list). Rerunning a command with the same
``--out`` resumes it. Bad input prints one line starting with ``error:`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import Gen4DError, __version__


def _add_common(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--out", required=True, help="run directory (created; rerun with the same folder to resume)")
    p.add_argument("--preset", default=default_preset, help=f"named settings (default: {default_preset})")
    p.add_argument("--iters", type=int, default=None, help="total optimisation steps (overrides the preset)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--models", default=None, help="real | tiny: pretrained priors or tiny random ones (reconstruction uses none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.epilog = "Any other argument key=value overrides a configuration field; DIR/config.yaml of a run lists them all."


def _base(args, iterations_key: str | None = "train") -> dict:
    base: dict = {}
    if args.iters is not None and args.iters < 1:
        raise Gen4DError(f"--iters must be at least 1, got {args.iters}")
    if args.iters is not None and iterations_key is not None:
        base.setdefault(iterations_key, {})["iterations"] = args.iters
    if args.seed is not None:
        base["seed"] = args.seed
    if args.device is not None:
        base["device"] = args.device
    return base


def _print_summary(out: Path, metrics: dict, headline: str, evaluated: bool = True) -> None:
    from rich.console import Console

    console = Console(soft_wrap=True)  # long paths stay on one line, copy-pastable
    console.print(f"[bold green]done[/bold green]  {headline}")
    console.print(f"  run directory   {out}")
    console.print(f"  metrics         {out / 'metrics.json'}")
    if evaluated:
        console.print(f"  test renders    {out / 'eval' / 'test'}")
    for fmt, paths in metrics.get("exports", {}).items():
        where = paths[0] if len(paths) == 1 else f"{Path(paths[0]).parent}/ ({len(paths)} files)"
        console.print(f"  export {fmt:<8} {where}")


def _quality(metrics: dict) -> str:
    return (f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f}  {metrics['num_gaussians']} Gaussians  "
            f"{metrics['iterations']} steps  {metrics['seconds']:.0f} s training")


def cmd_reconstruct(args) -> int:
    from .recipes.reconstruct import build_config, run_reconstruct

    base = _base(args)
    base["data"] = str(Path(args.data).resolve())
    cfg = build_config(args.preset, args.overrides, base)
    metrics = run_reconstruct(cfg, args.out, command=" ".join(sys.argv), quiet=args.quiet)
    _print_summary(Path(args.out), metrics, _quality(metrics))
    return 0


def cmd_demo(args) -> int:
    from .data.synthetic import SCENES, write_synthetic_scene
    from .recipes.reconstruct import DEMO_SCENE, build_config, run_reconstruct

    if args.scene not in SCENES:
        raise Gen4DError(f"unknown scene {args.scene!r}; choose from {', '.join(SCENES)}")
    out = Path(args.out)
    data = out / "data"
    base = _base(args)
    base["data"] = str(data.resolve())
    cfg = build_config(args.preset, args.overrides, base)  # validate options before writing anything
    if not (data / "transforms_train.json").exists():
        if out.exists() and any(p.name != "data" for p in out.iterdir()):
            raise Gen4DError(f"--out {out} is not empty and holds no gen4d demo; choose a new or empty folder")
        print(f"synthesising the {args.scene!r} scene ({DEMO_SCENE['resolution']} px) into {data}")
        write_synthetic_scene(args.scene, data, **DEMO_SCENE)
    metrics = run_reconstruct(cfg, out, command=" ".join(sys.argv), quiet=args.quiet)
    _print_summary(out, metrics, _quality(metrics))
    return 0


def cmd_dg4d(args) -> int:
    from .recipes.dg4d import build_config, run_dg4d

    base = _base(args, iterations_key=None)
    base["input"] = str(Path(args.input).resolve())
    base["mode"] = args.command
    if getattr(args, "driving_video", None):
        base.setdefault("driving", {})["path"] = str(Path(args.driving_video).resolve())
    if args.iters is not None:  # split like the seeds: equal static and dynamic steps
        base["static"] = {"iterations": max(1, args.iters // 2)}
        base["dynamic"] = {"iterations": max(1, args.iters - args.iters // 2)}
    cfg = build_config(args.preset, args.overrides, base)
    metrics = run_dg4d(cfg, args.out, command=" ".join(sys.argv), quiet=args.quiet)
    headline = f"{metrics['num_gaussians']} Gaussians  {metrics['driving_frames']} frames  {metrics['seconds']:.0f} s training"
    _print_summary(Path(args.out), metrics, headline, evaluated=False)
    return 0


def cmd_text(args) -> int:
    from .recipes.text2video4d import build_config, run_text2video4d

    base: dict = {"video": {"prompt": args.prompt}}
    if args.motion:
        base["video"]["motion"] = str(Path(args.motion).resolve())
    for key in ("seed", "device", "iters"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    cfg = build_config(args.preset, args.overrides, base)
    metrics = run_text2video4d(cfg, args.out, command=" ".join(sys.argv), quiet=args.quiet)
    headline = f"{metrics['num_gaussians']} Gaussians  {metrics['driving_frames']} frames  {metrics['seconds']:.0f} s training"
    _print_summary(Path(args.out), metrics, headline, evaluated=False)
    return 0


def _motion_base(args, **fields) -> dict:
    """Flags of the motion commands: ``--iters`` is their ``steps`` (training steps, DDIM steps)."""
    base = _base(args, iterations_key=None) | fields
    if args.iters is not None:
        base["steps"] = args.iters
    return base


def cmd_motion_train(args) -> int:
    from .recipes.motion import build_config, run_motion_train

    base = _motion_base(args, input=str(Path(args.input).resolve()))
    if args.prompt is not None:
        base["prompt"] = args.prompt
    cfg = build_config(args.preset, args.overrides, base)
    metrics = run_motion_train(cfg, args.out, command=" ".join(sys.argv), quiet=args.quiet)
    out = Path(args.out)
    _print_summary(out, metrics, f"{metrics['steps']} steps  {metrics['seconds']:.0f} s training", evaluated=False)
    print(f"  motion LoRA     {out / 'lora'}  (use it with: gen4d motion sample \"PROMPT\" --motion {out} --out OUT)")
    return 0


def cmd_motion_sample(args) -> int:
    from .recipes.motion_sample import build_config, run_motion_sample

    base = _motion_base(args, prompt=args.prompt)
    if args.motion:
        base["motion"] = str(Path(args.motion).resolve())
    cfg = build_config(args.preset, args.overrides, base)
    metrics = run_motion_sample(cfg, args.out, command=" ".join(sys.argv), quiet=args.quiet)
    out = Path(args.out)
    _print_summary(out, metrics, f"{cfg.num_frames} frames at {cfg.width}x{cfg.height}, {cfg.steps} DDIM steps", evaluated=False)
    print(f"  video           {out / 'video.mp4'}  ({out / 'video.gif'})")
    return 0


def _print_scores(scores: dict) -> None:
    names = [m for m in ("psnr", "ssim", "lpips", "clip", "fvd") if m in scores]
    print("  ".join(f"{m.upper()} {scores[m]:.4f}" for m in names))


def cmd_eval(args) -> int:
    from .recipes.evaluate import build_eval_config, run_eval, score_renders

    base: dict = {"data": str(Path(args.data).resolve())}
    if args.object:
        base["object"] = args.object
    if args.device:
        base["device"] = args.device
    cfg = build_eval_config(args.overrides, base)
    if args.renders:
        if args.dir:
            raise Gen4DError("give either a run directory or --renders, not both")
        scores = score_renders(args.renders, args.data, cfg)
        _print_scores(scores.get("average", scores))
        return 0
    if not args.dir:
        raise Gen4DError("give the run directory to evaluate (gen4d eval DIR --data C4D), or --renders PRED")
    scores = run_eval(cfg, args.dir, quiet=args.quiet)
    _print_scores(scores)
    print(f"  renders         {scores['renders']}")
    print(f"  metrics         {Path(args.dir) / 'eval' / 'metrics.json'}")
    return 0


def cmd_export(args) -> int:
    from .recipes.reconstruct import export_run

    formats = {"obj": "mesh", "mesh": "mesh", "glb": "glb", "ply": "ply", "mp4": "mp4"}
    chosen = []
    for f in args.format:
        if f not in formats:
            raise Gen4DError(f"unknown export format {f!r}; choose from glb, obj, ply, mp4")
        chosen.append(formats[f])
    written = export_run(args.dir, chosen, quiet=args.quiet)
    for fmt, paths in written.items():
        print(f"{fmt}: {paths[0] if len(paths) == 1 else f'{len(paths)} files in {Path(paths[0]).parent}'}")
    return 0


def _silence_library_progress() -> None:
    """--quiet: no progress bars from transformers / diffusers either (weight loading, shard writing)."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gen4d", description="Text, image, video or multi-view video to 4D assets.")
    parser.add_argument("--version", action="version", version=f"gen4d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="weight-free end-to-end job: synthetic 4D scene -> 4D Gaussians -> exports")
    _add_common(p, "demo")
    p.add_argument("--scene", default="jumping_jacks", help="synthetic scene: bouncing_balls | jumping_jacks | spinning_box")
    p.set_defaults(func=cmd_demo, overrides_allowed=True)

    p = sub.add_parser("reconstruct", help="multi-view video in D-NeRF format -> 4D Gaussians")
    p.add_argument("data", help="D-NeRF scene folder (transforms_train.json, transforms_test.json, images)")
    _add_common(p, "default")
    p.set_defaults(func=cmd_reconstruct, overrides_allowed=True)

    p = sub.add_parser("image", help="image -> 4D (DreamGaussian4D): driving video, static and dynamic Gaussians, exports")
    p.add_argument("input", help="an image (RGBA as is; RGB needs rembg for background removal)")
    _add_common(p, "default")
    p.add_argument("--recipe", default="dg4d", choices=["dg4d"], help="image-to-4D recipe")
    p.add_argument("--driving-video", default=None, help="a video or folder of frames to use instead of generating one")
    p.set_defaults(func=cmd_dg4d, overrides_allowed=True)

    p = sub.add_parser("video", help="monocular video -> 4D (DreamGaussian4D): first frame -> static, then dynamic")
    p.add_argument("input", help="a video file (.mp4, .gif, ...) or a folder of frames")
    _add_common(p, "default")
    p.set_defaults(func=cmd_dg4d, overrides_allowed=True)

    p = sub.add_parser("text", help="text -> 4D: text-to-video (optionally with a MotionDirector LoRA) -> DreamGaussian4D")
    p.add_argument("prompt", help="what to generate, e.g. \"a corgi running\"")
    _add_common(p, "default")
    p.add_argument("--recipe", default="text2video4d", choices=["text2video4d"], help="text-to-4D recipe")
    p.add_argument("--motion", default=None, help="a `gen4d motion train` run folder: generate the video with its motion")
    p.set_defaults(func=cmd_text, overrides_allowed=True)

    motion = sub.add_parser("motion", help="MotionDirector: learn a motion from videos, generate new videos with it")
    msub = motion.add_subparsers(dest="motion_command", required=True)
    p = msub.add_parser("train", help="train dual-path (spatial + temporal) LoRA on reference video(s)")
    p.add_argument("input", help="a video, a folder of frames, a folder of videos (prompt in VIDEO.txt) or of images (preset appearance)")
    p.add_argument("--prompt", default=None, help="what the video shows (else read from a .txt next to each video)")
    _add_common(p, "default")
    p.set_defaults(func=cmd_motion_train, overrides_allowed=True)
    p = msub.add_parser("sample", help="text -> video with a learned motion (DDIM, optional inversion noise prior)")
    p.add_argument("prompt", help="what to generate")
    p.add_argument("--motion", default=None, help="a `gen4d motion train` run folder (its temporal LoRA); none: plain text-to-video")
    _add_common(p, "default")
    p.set_defaults(func=cmd_motion_sample, overrides_allowed=True)

    p = sub.add_parser("eval", help="Consistent4D evaluation: PSNR, SSIM, LPIPS, CLIP similarity, FVD")
    p.add_argument("dir", nargs="?", default=None, help="a finished run directory (e.g. of gen4d video)")
    p.add_argument("--data", required=True, help="Consistent4D data: the dataset root, or one object's ground truth folder with --renders")
    p.add_argument("--object", default=None, help="object name in the dataset (default: the run's input folder name)")
    p.add_argument("--renders", default=None, help="score these renders (eval_<k>/<i>.png) instead of rendering a run")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--models", default=None, help="real | tiny: pretrained metric networks or tiny random ones")
    p.add_argument("--quiet", action="store_true")
    p.epilog = "key=value overrides set EvalConfig fields, e.g. metrics=psnr,ssim azimuths_deg=[-75,15,105,195]."
    p.set_defaults(func=cmd_eval, overrides_allowed=True)

    p = sub.add_parser("export", help="export a finished run again, in chosen formats")
    p.add_argument("dir", help="run directory")
    p.add_argument("--format", nargs="+", required=True, help="glb (animated) | obj (per-frame meshes) | ply | mp4")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come anywhere, so they are taken from what argparse does not recognise.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra and not hasattr(args, "overrides_allowed"):
        parser.error(f"{args.command} takes no key=value overrides: {' '.join(extra)}")
    args.overrides = extra
    try:
        if getattr(args, "quiet", False):
            _silence_library_progress()
        if getattr(args, "models", None):
            from .guidance.registry import set_model_set

            set_model_set(args.models)
        return args.func(args)
    except Gen4DError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
