"""The one stage loop of every recipe and every trainable: 4D Gaussians, deformation fields, LoRAs, embeddings.

A recipe is an ordered list of stages in one run directory (:class:`~gen4d.runs.RunDir`):

* an **optimisation stage** (:class:`Stage`) trains a *model*: anything with ``tensors() -> dict[str, Tensor]``
  (everything needed to rebuild it, checkpointed) that the recipe can rebuild from those tensors. The stage
  supplies optimisers, learning rates, and either its losses (the loop sums them, routes each to the parameters it
  may update, steps the optimisers and runs the densification strategy) or a whole custom update (MotionDirector's
  two paths with their own optimisers). The loop owns iteration, progress, previews, checkpoints and resumption;
* an **artifact stage** (:class:`ArtifactStage`) makes files once (a driving video, a generated clip, cached
  latents) and records a small JSON result; a rerun reads the result back instead of making them again.

Both follow the same rules: a stage is done when ``DIR/stages/<name>`` says ``complete``; an interrupted
optimisation stage resumes from its last checkpoint. Everything random inside a stage draws from the stage's own
``torch.Generator``; its state, torch's global RNG state (dropout), the optimiser moments and any extra state
(e.g. a gradient scaler) are checkpointed, so a run that is killed and resumed ends with the same parameters as
one that was never interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from .. import Gen4DError
from ..gaussians.strategy import DensifyStrategy
from ..runs import RunDir, load_optimizer, optimizer_tensors


class Trainable(Protocol):
    """What a stage trains: its checkpointed tensors (and, optionally, ``summary() -> dict`` for logs)."""

    def tensors(self) -> dict[str, Tensor]: ...


@dataclass
class StepLosses:
    """What a stage's loss function returns for one step."""

    losses: dict[str, Tensor]
    """Named, weighted losses; their sum is minimised."""
    meta: dict | list[dict] | None = None
    """Render metadata for the densification strategy (projected means, radii, ...): one render's, or a list."""
    routes: dict[str, list[Tensor]] | None = None
    """Loss name -> the only parameters that loss may update (losses not named here update every parameter). The
    parameters outside a loss's route receive no gradient from it, so a step whose losses all exclude a parameter
    leaves it bit-identical."""
    lr_scale: dict[str, float] | None = None
    """Optimiser name -> factor on its learning rates for this step only."""


LossFn = Callable[[Any, int, torch.Generator], "StepLosses | tuple[dict[str, Tensor], dict]"]
"""``(model, step, generator) -> StepLosses`` (or ``(losses, meta)``)."""
UpdateFn = Callable[[Any, dict, int, torch.Generator], dict]
"""``(model, optimizers, step, generator) -> {name: float or None}``: a whole custom step (backward and optimiser
steps included); the returned scalars are shown and, with ``Stage.record``, kept per step."""


@dataclass
class Stage:
    """One optimisation stage (see the module doc)."""

    name: str
    """Folder name under ``DIR/stages``."""
    iterations: int
    """Steps in this stage."""
    make_optimizers: Callable[[Any], dict[str, torch.optim.Optimizer]]
    """Builds the optimisers for the model (names are checkpoint keys)."""
    losses: LossFn | None = None
    """The step's losses (the loop does the update); exactly one of ``losses`` and ``update``."""
    update: UpdateFn | None = None
    """A custom update that does everything itself."""
    learning_rates: Callable[[int], dict[str, Any]] = lambda step: {}
    """step -> {optimiser name: lr, or a list with one lr per parameter group}, applied before every step (a pure
    function of the step, so resuming needs no scheduler state)."""
    prepare: Callable[[Any], Any] | None = None
    """Called once when the stage starts fresh (not on resume); may return a changed model (e.g. attach a field)."""
    strategy: DensifyStrategy | None = None
    """Densification acting on ``model.gaussians`` (None: a fixed set of Gaussians)."""
    preview: Callable[[Any, int, Path], None] | None = None
    """``(model, step, folder)``, called every ``preview_every`` steps and at the end."""
    checkpoint_every: int = 200
    preview_every: int = 0
    seed: int = 0
    """Seed of the stage's generator."""
    extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None
    """``(get, set)`` of JSON-able state checkpointed with the stage (e.g. a gradient scaler)."""
    extra_tensors: tuple[Callable[[], dict[str, Tensor]], Callable[[dict[str, Tensor]], None]] | None = None
    """``(get, set)`` of tensors trained beside the model and checkpointed with the stage (e.g. a prior's own LoRA,
    VSD's); ``set`` gets them back on resume, before the optimisers are restored."""
    on_checkpoint: Callable[[int], None] | None = None
    """Called after each intermediate checkpoint with the step (e.g. to keep a LoRA folder per checkpoint)."""
    record: bool = False
    """Keep every step's scalars (``update``'s result, or the total loss) in the checkpoint state and stats."""
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if (self.losses is None) == (self.update is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of losses= and update=")


@dataclass
class ArtifactStage:
    """A stage that makes files once: ``make(folder) -> result`` writes into ``DIR/stages/<name>`` and returns a small
    JSON-able result, recorded (``complete``) only after ``make`` has returned."""

    name: str
    make: Callable[[Path], dict]


ProgressListener = Callable[[dict], None]
_listeners: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> None:
    """Call ``listener(event)`` as stages progress (the web app's progress display). ``event``: ``stage``, ``step``,
    ``iterations`` (0 for an artifact stage), ``rate`` (steps per second, 0 before the first step), ``complete``."""
    _listeners.append(listener)


def remove_progress_listener(listener: ProgressListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


PROGRESS_ENV = "GEN4D_PROGRESS_FILE"
"""When set, the command line appends the progress events to this file, one JSON line each (the web app reads it)."""


def progress_to_file(path: Path) -> ProgressListener:
    """A listener appending each event to ``path`` as one JSON line: at most about 4 a second within a stage, and
    every stage's start and end."""
    last = [0.0, ""]

    def listener(event: dict) -> None:
        now = time.monotonic()
        if event["stage"] == last[1] and not event["complete"] and event["step"] and now - last[0] < 0.25:
            return
        last[0], last[1] = now, event["stage"]
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")

    return listener


def _notify(stage: str, step: int, iterations: int, rate: float = 0.0, complete: bool = False) -> None:
    for listener in list(_listeners):
        listener({"stage": stage, "step": step, "iterations": iterations, "rate": rate, "complete": complete})


def run_artifact(run: RunDir, stage: ArtifactStage) -> dict:
    """The artifact's result: read back when the stage is complete, else made now (and recorded)."""
    state = run.stage_state(stage.name)
    if state is not None and state.get("complete"):
        run.log(f"stage {stage.name}: complete, reusing it")
        return state.get("result", {})
    run.log(f"stage {stage.name}: making it")
    _notify(stage.name, 0, 0)
    t0 = time.perf_counter()
    result = stage.make(run.stage_dir(stage.name))
    run.write_stage_state(stage.name, {"stage": stage.name, "complete": True, "seconds": time.perf_counter() - t0, "result": result})
    run.log(f"stage {stage.name}: complete")
    return result


def _summary(model) -> dict:
    summary = getattr(model, "summary", None)
    return summary() if callable(summary) else {}


def _describe(model) -> str:
    return ", ".join(f"{v} {k.replace('num_', '')}" for k, v in _summary(model).items() if isinstance(v, int))


def _checkpoint(run: RunDir, stage: Stage, model, optimizers: dict, generator: torch.Generator, step: int, elapsed: float,
                complete: bool, history: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.tensors().items()}
    groups = {}
    for name, opt in optimizers.items():
        t, meta = optimizer_tensors(f"optim.{name}", opt)
        tensors.update(t)
        groups[name] = meta
    if stage.strategy is not None:
        tensors.update({f"strategy.{k}": v for k, v in stage.strategy.state_dict().items()})
    if stage.extra_tensors is not None:
        tensors.update({f"extra.{k}": v.detach() for k, v in stage.extra_tensors[0]().items()})
    tensors["rng"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    state = {
        "stage": stage.name,
        "step": step,
        "iterations": stage.iterations,
        "complete": complete,
        "seconds": elapsed,
        **_summary(model),
        "optimizers": groups,
        "extra": stage.extra_state[0]() if stage.extra_state is not None else {},
    }
    if stage.record:
        state["history"] = history
    run.save_checkpoint(stage.name, tensors, state)


def model_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's tensors of a stage checkpoint (without the ``model.`` prefix)."""
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


def run_stages(
    run: RunDir,
    stages: list[Stage],
    init: Callable[[], Any],
    load: Callable[[dict[str, Tensor]], Any],
    quiet: bool = False,
    stop_after_step: int | None = None,
) -> tuple[Any, dict]:
    """Run (or resume) the stages in order. Returns the final model and per-stage stats.

    ``init()`` builds the model of a fresh run; ``load(tensors)`` rebuilds it from a checkpoint's model tensors.
    ``stop_after_step``: for tests, return right after the checkpoint written at that global step, as a kill
    would leave the run (the stage is not marked complete).
    """
    model = None
    last_complete: dict[str, Tensor] | None = None
    stats: dict = {}
    global_offset = 0
    for stage in stages:
        ckpt = run.load_checkpoint(stage.name)
        if ckpt is not None and ckpt[1].get("complete"):
            last_complete = ckpt[0]
            stats[stage.name] = {"seconds": ckpt[1]["seconds"], "iterations": ckpt[1]["step"], "resumed": "complete"}
            if stage.record:
                stats[stage.name]["history"] = ckpt[1].get("history", {})
            global_offset += stage.iterations
            model = None
            continue
        if model is None:
            model = load(model_tensors(last_complete)) if last_complete is not None else init()
        generator = torch.Generator().manual_seed(stage.seed)
        start, elapsed, history = 0, 0.0, {}
        if ckpt is not None:
            tensors, state = ckpt
            model = load(model_tensors(tensors))
            if stage.extra_tensors is not None:
                stage.extra_tensors[1]({k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")})
            optimizers = stage.make_optimizers(model)
            for name, opt in optimizers.items():
                load_optimizer(f"optim.{name}", opt, tensors, state["optimizers"][name])
            if stage.strategy is not None:
                stage.strategy.load_state_dict({k[len("strategy.") :]: v for k, v in tensors.items() if k.startswith("strategy.")})
            if stage.extra_state is not None and state.get("extra"):
                stage.extra_state[1](state["extra"])
            generator.set_state(tensors["rng"])
            torch.set_rng_state(tensors["rng.torch"])
            if "rng.cuda" in tensors and torch.cuda.is_available():
                torch.cuda.set_rng_state(tensors["rng.cuda"])
            start, elapsed, history = state["step"], state["seconds"], state.get("history", {})
            run.log(f"stage {stage.name}: resuming at step {start}/{stage.iterations}")
        else:
            if stage.prepare is not None:
                model = stage.prepare(model)
            optimizers = stage.make_optimizers(model)
            run.log(f"stage {stage.name}: starting ({stage.iterations} steps{', ' + _describe(model) if _describe(model) else ''})")
        preview_dir = run.stage_dir(stage.name) / "preview"
        finished = _loop(run, stage, model, optimizers, generator, start, elapsed, history, preview_dir, quiet,
                         None if stop_after_step is None else stop_after_step - global_offset)
        if not finished:
            return model, stats
        stats[stage.name] = {"seconds": stage.stats["seconds"], "iterations": stage.iterations}
        if stage.record:
            stats[stage.name]["history"] = history
        global_offset += stage.iterations
    if model is None:
        model = load(model_tensors(last_complete))
    return model, stats


def backward(step_losses: StepLosses) -> Tensor:
    """Back-propagate the step's losses, each into its route (see :class:`StepLosses`); returns their sum."""
    losses = step_losses.losses
    total = sum(losses.values())
    routes = step_losses.routes or {}
    if not routes:
        total.backward()
        return total
    groups: dict[tuple[int, ...], tuple[list[Tensor], list[Tensor]]] = {}
    free = [v for k, v in losses.items() if k not in routes]
    for k, params in routes.items():
        if k in losses:
            key = tuple(sorted(id(p) for p in params))
            groups.setdefault(key, (params, []))[1].append(losses[k])
    parts = [(None, free)] if free else []
    parts += [(params, ls) for params, ls in groups.values()]
    for i, (params, ls) in enumerate(parts):
        part = sum(ls)
        retain = i < len(parts) - 1
        if params is None:
            part.backward(retain_graph=retain)
        elif params and part.requires_grad:
            part.backward(inputs=list(params), retain_graph=retain)
    return total


def _apply_learning_rates(stage: Stage, optimizers: dict, step: int) -> None:
    for name, lr in stage.learning_rates(step).items():
        groups = optimizers[name].param_groups
        for group, value in zip(groups, lr if isinstance(lr, (list, tuple)) else [lr] * len(groups)):
            group["lr"] = value


def _default_update(stage: Stage, model, optimizers: dict, step: int, generator: torch.Generator) -> dict:
    out = stage.losses(model, step, generator)
    if not isinstance(out, StepLosses):
        out = StepLosses(*out)
    if stage.strategy is not None:
        stage.strategy.step_pre_backward(out.meta)
    # stop before a non-finite value reaches the parameters (or a kernel that cannot take it); one check per step
    values = torch.stack([v.detach().sum().float() for v in out.losses.values()]) if out.losses else None
    if values is not None and not bool(torch.isfinite(values).all()):
        bad = [k for k, ok in zip(out.losses, torch.isfinite(values).tolist()) if not ok]
        raise Gen4DError(f"stage {stage.name!r} diverged at step {step + 1}: loss {', '.join(sorted(bad))} is not finite; its last "
                         "checkpoint is kept (lower its learning rates to go on)")
    total = backward(out)
    scaled = []
    for name, factor in (out.lr_scale or {}).items():
        for group in optimizers[name].param_groups:
            scaled.append((group, group["lr"]))
            group["lr"] = group["lr"] * factor
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    for group, lr in scaled:
        group["lr"] = lr
    if stage.strategy is not None:
        # after the optimiser step (gsplat's strategy contract): densification replaces the parameter tensors, and
        # new tensors carry no gradient, so densifying first would drop this step's update
        report = stage.strategy.step_post_backward(model.gaussians, optimizers, step, out.meta, generator)
        follow = getattr(model, "refine_deformation", None)
        if report.get("refined") and callable(follow):
            follow(optimizers)  # a field with its own structure (control nodes) follows the new set of Gaussians
    return {"loss": float(total.detach())}


def _loop(run, stage, model, optimizers, generator, start, elapsed, history, preview_dir, quiet, stop_after_step) -> bool:
    columns = [
        TextColumn(f"[bold]{stage.name}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    t_start = time.perf_counter()
    shown: dict[str, float] = {}
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task(stage.name, total=stage.iterations, completed=start, info="")
        _notify(stage.name, start, stage.iterations)
        for step in range(start, stage.iterations):
            _apply_learning_rates(stage, optimizers, step)
            if stage.update is not None:
                scalars = stage.update(model, optimizers, step, generator)
            else:
                scalars = _default_update(stage, model, optimizers, step, generator)
            if stage.record:
                for k, v in scalars.items():
                    history.setdefault(k, []).append(v)
            shown.update({k: v for k, v in scalars.items() if v is not None})
            done = step + 1
            now = time.perf_counter()
            rate = (done - start) / max(now - t_start, 1e-9)
            info = "  ".join([f"{k} {v:.4f}" for k, v in list(shown.items())[:3]] + [_describe(model), f"{rate:.2f} it/s"])
            progress.update(task, completed=done, info=info)
            _notify(stage.name, done, stage.iterations, rate)
            if stage.preview is not None and stage.preview_every > 0 and done % stage.preview_every == 0 and done < stage.iterations:
                stage.preview(model, done, preview_dir)
            stopping = stop_after_step is not None and done >= stop_after_step
            if done < stage.iterations and ((stage.checkpoint_every > 0 and done % stage.checkpoint_every == 0) or stopping):
                _checkpoint(run, stage, model, optimizers, generator, done, elapsed + now - t_start, False, history)
                if stage.on_checkpoint is not None:
                    stage.on_checkpoint(done)
                if stopping:
                    return False
    stage.stats["seconds"] = elapsed + time.perf_counter() - t_start
    if stage.preview is not None:
        stage.preview(model, stage.iterations, preview_dir)
    _checkpoint(run, stage, model, optimizers, generator, stage.iterations, stage.stats["seconds"], True, history)
    _notify(stage.name, stage.iterations, stage.iterations, complete=True)
    described = _describe(model)
    run.log(f"stage {stage.name}: complete in {stage.stats['seconds']:.1f} s{', ' + described if described else ''}")
    return True
