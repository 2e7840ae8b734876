"""The ``gen4d`` command line, built from the recipe registry (:data:`gen4d.recipes.RECIPES`).

    gen4d demo --out DIR [--recipe reconstruct|dg4d|fourdfy]   weight-free: a synthetic scene, reconstructed (default) or
                                                       distilled by a recipe from oracle priors
    gen4d reconstruct DATA --out DIR     D-NeRF-format multi-view video -> 4D Gaussians -> metrics + exports
    gen4d image IMAGE --out DIR          image -> 4D (--recipe: see gen4d image --help)
    gen4d video VIDEO --out DIR          monocular video -> 4D
    gen4d text "PROMPT" --out DIR        text -> 4D
    gen4d invert IMAGE --token "<tok>" --out DIR   textual inversion: a new token for Stable Diffusion 1.5
    gen4d motion train VIDEO --out DIR   MotionDirector: learn a motion LoRA from reference video(s)
    gen4d motion sample "PROMPT" --out DIR [--motion DIR]   text -> video with a learned motion
    gen4d subject train IMAGES --token sks --class dog --out DIR   DreamBooth LoRA of a subject (dreamin4d --subject)
    gen4d export DIR --format glb|obj|textured|ply|mp4|html   (re-)export a finished run
    gen4d view DIR [--host H] [--port P]   viser viewer of a run's 4D Gaussians / meshes, finished or training
    gen4d app [--runs DIR] [--models tiny]   gradio web app: every recipe from the browser
    gen4d eval DIR --data C4D [--object NAME]   render a run at the Consistent4D cameras and score it
    gen4d models [--recipe NAME]         the models each recipe needs, and which are in the local cache
    gen4d batch JOBS --out DIR [--address auto|ray://HOST:PORT]   many jobs on Ray, one run directory each

Generating commands take ``--recipe``, ``--preset``, ``--iters``, ``--seed``, ``--device``, ``--models`` and
``key=value`` overrides of any configuration field (``DIR/config.yaml`` of a run lists them all). Before any work
a command checks every model and optional package its recipe needs. Rerunning a command with the same ``--out``
resumes it. Bad input prints one line starting with ``error:`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from rich.console import Console

import gen4d.testing  # noqa: F401  (registers the tiny model set behind --models tiny)

from . import Gen4DError, __version__
from .console import capture_library_output
from .data.synthetic import SCENES
from .demo import DEMOS, run_demo
from .models.preflight import check_requirements, requirement_status
from .models.registry import model_set, set_model_set
from .recipes import RECIPES, recipes_for
from .recipes.evaluate import build_eval_config, run_eval, score_renders
from .runs import export_run
from .training.loop import PROGRESS_ENV, add_progress_listener, progress_to_file

INPUTS = {
    "reconstruct": ("DATA", "D-NeRF scene folder (transforms_train.json, transforms_test.json, images)"),
    "image": ("IMAGE", "an image (RGBA as is; RGB needs rembg for background removal)"),
    "video": ("VIDEO", "a video file (.mp4, .gif, ...) or a folder of frames"),
    "text": ("PROMPT", 'what to generate, e.g. "a corgi running"'),
    "invert": ("IMAGE", "an image (RGBA is composited on white, RGB used as is) to learn a token from"),
    "motion train": ("INPUT", "a video, a folder of frames, a folder of videos (prompt in VIDEO.txt) or of images (preset appearance)"),
    "motion sample": ("PROMPT", "what to generate"),
    "subject train": ("IMAGES", "a folder of images of the subject (or one image)"),
}
HELP = {
    "reconstruct": "multi-view video in D-NeRF format -> 4D Gaussians",
    "image": "image -> 4D",
    "video": "monocular video -> 4D",
    "text": "text -> 4D",
    "invert": "textual inversion: learn a new token's embedding for Stable Diffusion 1.5 from an image",
    "motion train": "MotionDirector: train dual-path (spatial + temporal) LoRA on reference video(s)",
    "motion sample": "text -> video with a learned motion (DDIM, optional inversion noise prior)",
    "subject train": "DreamBooth LoRA of a personalised subject (for gen4d text --recipe dreamin4d --subject DIR)",
}


def _recipes_epilog(command: str) -> str:
    lines = ["recipes (--recipe):"]
    for r in recipes_for(command):
        lines.append(f"  {r.name}: {r.description}")
        lines.append(f"      presets (--preset): {', '.join(r.presets)}")
    lines.append("Any other argument key=value overrides a configuration field; DIR/config.yaml of a run lists them all.")
    return "\n".join(lines)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory (created; rerun with the same folder to resume)")
    p.add_argument("--preset", default=None, help="named settings (default: the recipe's default)")
    p.add_argument("--iters", type=int, default=None, help="total optimisation steps (split over the recipe's stages)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--models", default=None, help="real | tiny: pretrained models or tiny random ones of the same classes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_recipe_command(sub, command: str, name: str) -> None:
    recipes = recipes_for(command)
    metavar, help_input = INPUTS[command]
    p = sub.add_parser(name, help=HELP[command], epilog=_recipes_epilog(command), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar=metavar, help=help_input)
    _add_run_flags(p)
    p.add_argument("--recipe", default=recipes[0].name, choices=[r.name for r in recipes], help=f"recipe (default: {recipes[0].name})")
    seen: dict[str, str] = {}
    for r in recipes:
        for o in r.options:
            if o.flag not in seen:
                seen[o.flag] = o.help
                p.add_argument(o.flag, default=None, help=o.help)
    p.set_defaults(func=cmd_recipe, recipe_command=command, option_flags=sorted(seen), overrides_allowed=True)


def _option_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def print_summary(out: Path, metrics: dict, headline: str, evaluated: bool = False, extra: list[tuple[str, str]] = ()) -> None:
    console = Console(soft_wrap=True)  # long paths stay on one line, copy-pastable
    console.print(f"[bold green]done[/bold green]  {headline}")
    console.print(f"  run directory   {out}")
    console.print(f"  metrics         {out / 'metrics.json'}")
    if evaluated:
        console.print(f"  test renders    {out / 'eval' / 'test'}")
    for fmt, paths in metrics.get("exports", {}).items():
        where = paths[0] if len(paths) == 1 else f"{Path(paths[0]).parent}/ ({len(paths)} files)"
        console.print(f"  export {fmt:<8} {where}")
    for label, where in extra:
        console.print(f"  {label:<15} {where}")


def cmd_recipe(args) -> int:
    recipe = RECIPES[args.recipe]
    command = args.recipe_command
    options = {flag: getattr(args, _option_dest(flag)) for flag in args.option_flags}
    base = recipe.command_base(command, input=args.input, seed=args.seed, device=args.device, iters=args.iters, options=options)
    cfg = recipe.build_config(args.preset or recipe.default_preset, args.overrides, base)
    recipe.check(cfg)
    check_requirements(recipe.requirements(cfg), f"gen4d {command} --recipe {recipe.name}")
    metrics = recipe.run(cfg, args.out, command=" ".join(sys.argv), quiet=args.quiet)
    out = Path(args.out)
    print_summary(out, metrics, recipe.headline(metrics), recipe.evaluated, recipe.outputs(out))
    return 0


def cmd_demo(args) -> int:
    if args.recipe not in DEMOS:
        raise Gen4DError(f"no demo for recipe {args.recipe!r}; choose from {', '.join(DEMOS)}")
    metrics, headline, evaluated = run_demo(args.recipe, args)
    print_summary(Path(args.out), metrics, headline, evaluated)
    return 0


def _print_scores(scores: dict) -> None:
    names = [m for m in ("psnr", "ssim", "lpips", "clip", "fvd") if m in scores]
    print("  ".join(f"{m.upper()} {scores[m]:.4f}" for m in names))


def cmd_eval(args) -> int:
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
    from .batch.leaderboard import evaluate_batch, is_batch_dir

    if is_batch_dir(args.dir):  # a gen4d batch folder: every finished run, one leaderboard table
        evaluate_batch(args.dir, base, args.overrides, quiet=args.quiet)
        print(f"  leaderboard     {Path(args.dir) / 'leaderboard.md'}")
        return 0
    scores = run_eval(cfg, args.dir, quiet=args.quiet)
    _print_scores(scores)
    print(f"  renders         {scores['renders']}")
    print(f"  metrics         {Path(args.dir) / 'eval' / 'metrics.json'}")
    return 0


def cmd_batch(args) -> int:
    from .batch import read_jobs

    jobs, cwd = read_jobs(args.jobs, shlex.split(args.with_args or "") + args.overrides)
    try:
        from .batch.run import BatchOptions, run_batch
    except ImportError as e:
        raise Gen4DError(f"gen4d batch needs Ray ({e.name} is not installed): pip install -e \".[batch]\"") from None
    options = BatchOptions(address=args.address, gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
                           max_retries=args.max_retries, num_cpus=args.num_cpus, quiet=args.quiet)
    summary = run_batch(jobs, args.out, cwd, options)
    return 0 if summary["counts"]["done"] == len(jobs) else 1


def cmd_export(args) -> int:
    formats = {"obj": "mesh", "mesh": "mesh", "glb": "glb", "textured": "textured", "ply": "ply", "mp4": "mp4", "html": "html", "nodes": "nodes"}
    chosen = []
    for f in args.format:
        if f not in formats:
            raise Gen4DError(f"unknown export format {f!r}; choose from glb, obj, textured, ply, mp4, html, nodes")
        chosen.append(formats[f])
    written = export_run(args.dir, chosen, quiet=args.quiet)
    for fmt, paths in written.items():
        print(f"{fmt}: {paths[0] if len(paths) == 1 else f'{len(paths)} files in {Path(paths[0]).parent}'}")
    return 0


def _need(module: str, command: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise Gen4DError(f"{command} needs {module}: pip install 'gen4d[app]' (from a checkout: pip install -e \".[app]\")")


def cmd_view(args) -> int:
    from .viewer import serve

    _need("viser", "gen4d view")
    try:
        serve(args.dir, host=args.host, port=args.port, frames=args.frames, device=args.device)
    except OSError:
        raise Gen4DError(f"cannot serve on {args.host}:{args.port}: the port is taken or the address is not this machine's; "
                         "choose another --port or --host") from None
    return 0


def cmd_app(args) -> int:
    from .app import launch

    _need("gradio", "gen4d app")
    try:
        launch(args.runs, host=args.host, port=args.port, models=args.models or model_set())
    except OSError:
        raise Gen4DError(f"cannot serve on {args.host}:{args.port}: the port is taken or the address is not this machine's; "
                         "choose another --port or --host") from None
    return 0


def cmd_models(args) -> int:
    if args.recipe is not None and args.recipe not in RECIPES:
        raise Gen4DError(f"unknown recipe {args.recipe!r}; choose from {', '.join(RECIPES)}")
    console = Console(soft_wrap=True)
    console.print(f"model set: {model_set()}  (status: cached = usable offline; missing = `hf download` it first)")
    for recipe in ([RECIPES[args.recipe]] if args.recipe else RECIPES.values()):
        for command in recipe.commands:
            cfg = recipe.build_config(recipe.default_preset, [], recipe.command_base(command))
            needs = requirement_status(recipe.requirements(cfg))
            console.print(f"[bold]{recipe.name}[/bold] (gen4d {command})" + ("  needs nothing pretrained" if not needs else ""))
            for req, status in needs:
                style = {"missing": "red", "downloadable": "yellow"}.get(status, "green")
                console.print(f"  [{style}]{status:<12}[/{style}] {req.label:<22} {req.where():<48} {req.purpose}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gen4d", description="Text, image, video or multi-view video to 4D assets.")
    parser.add_argument("--version", action="version", version=f"gen4d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="weight-free end-to-end job on a synthetic 4D scene",
                       epilog=f"demos (--recipe): {', '.join(DEMOS)}. Any other argument key=value overrides a configuration field.")
    _add_run_flags(p)
    p.add_argument("--recipe", default="reconstruct", help=f"what to demonstrate: {' | '.join(DEMOS)} (default: reconstruct)")
    p.add_argument("--scene", default=None, help=f"synthetic scene: {' | '.join(SCENES)}")
    p.set_defaults(func=cmd_demo, overrides_allowed=True)

    for command in ("reconstruct", "image", "video", "text", "invert"):
        _add_recipe_command(sub, command, command)

    motion = sub.add_parser("motion", help="MotionDirector: learn a motion from videos, generate new videos with it")
    msub = motion.add_subparsers(dest="motion_command", required=True)
    _add_recipe_command(msub, "motion train", "train")
    _add_recipe_command(msub, "motion sample", "sample")

    subject = sub.add_parser("subject", help="a personalised subject: DreamBooth LoRA from a few images")
    ssub = subject.add_subparsers(dest="subject_command", required=True)
    _add_recipe_command(ssub, "subject train", "train")

    p = sub.add_parser("eval", help="Consistent4D evaluation: PSNR, SSIM, LPIPS, CLIP similarity, FVD")
    p.add_argument("dir", nargs="?", default=None, help="a finished run directory (e.g. of gen4d video), or a gen4d batch folder (one leaderboard table)")
    p.add_argument("--data", required=True, help="Consistent4D data: the dataset root, or one object's ground truth folder with --renders")
    p.add_argument("--object", default=None, help="object name in the dataset (default: the run's input folder name)")
    p.add_argument("--renders", default=None, help="score these renders (eval_<k>/<i>.png) instead of rendering a run")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--models", default=None, help="real | tiny: pretrained metric networks or tiny random ones")
    p.add_argument("--quiet", action="store_true")
    p.epilog = "key=value overrides set EvalConfig fields, e.g. metrics=psnr,ssim azimuths_deg=[-75,15,105,195]."
    p.set_defaults(func=cmd_eval, overrides_allowed=True)

    p = sub.add_parser("batch", help="many jobs on Ray (a local instance or a cluster), one run directory each",
                       epilog="JOBS: a .yaml / .jsonl list of gen4d commands (without --out), a .txt of prompts, or a folder of "
                              "images / videos / scenes. key=value arguments are given to every job. Rerun the same command to "
                              "resume: finished jobs are skipped, interrupted ones continue from their checkpoints.")
    p.add_argument("jobs", metavar="JOBS", help="job list (.yaml, .jsonl), prompts (.txt) or a folder of inputs")
    p.add_argument("--out", required=True, help="batch folder: DIR/<job> is each job's run directory, DIR/batch.json the summary")
    p.add_argument("--address", default=None, help="Ray cluster: auto (started by `ray start` here) or ray://HOST:PORT; default: a local Ray instance")
    p.add_argument("--gpus-per-job", type=float, default=None, help="GPUs per job (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-job", type=float, default=1.0, help="CPUs per job (default 1)")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a job whose worker died or crashed (default 2)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all); ignored with --address")
    p.add_argument("--with", dest="with_args", default=None, help='arguments given to every job, e.g. --with "--models tiny --iters 100"')
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch, overrides_allowed=True)

    p = sub.add_parser("export", help="export a finished run again, in chosen formats")
    p.add_argument("dir", help="run directory")
    p.add_argument("--format", nargs="+", required=True, help="glb (animated) | obj (per-frame meshes) | textured (UV-textured mesh sequence + animated GLB) | ply | mp4 | html (one self-contained page playing the animated mesh) | nodes (a node deformation's control nodes per frame, JSON)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("view", help="interactive viewer (viser) of a run's 4D Gaussians or meshes; follows a run still training")
    p.add_argument("dir", help="run directory (finished or still training)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--frames", type=int, default=None, help="frames of the time slider (default: the run's export frame count)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("app", help="web app (gradio): every recipe from the browser, progress, results, downloads")
    p.add_argument("--runs", default="runs", help="folder for the app's jobs (default: ./runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--models", default=None, help="real | tiny: pretrained models or tiny random ones (try the app without weights)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("models", help="the models each recipe needs and whether they are in the local cache")
    p.add_argument("--recipe", default=None, help=f"one recipe: {' | '.join(RECIPES)}")
    p.add_argument("--models", default=None, help="real | tiny: which model set to check")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    capture_library_output()
    parser = build_parser()
    # key=value overrides may come anywhere, so they are taken from what argparse does not recognise.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra and not hasattr(args, "overrides_allowed"):
        parser.error(f"{args.command} takes no key=value overrides: {' '.join(extra)}")
    args.overrides = extra
    if os.environ.get(PROGRESS_ENV):  # the web app follows its jobs' stages through this file
        add_progress_listener(progress_to_file(Path(os.environ[PROGRESS_ENV])))
    try:
        if getattr(args, "models", None):
            set_model_set(args.models)
        return args.func(args)
    except Gen4DError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except SystemError as e:
        # Ctrl-C that lands inside a compiled (numba) kernel comes back as "returned a result with an exception set",
        # a SystemError whose cause is the KeyboardInterrupt: it is the same interruption.
        if not _caused_by_interrupt(e):
            raise
        return _interrupted()


def _interrupted() -> int:
    print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
    return 130


def _caused_by_interrupt(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
