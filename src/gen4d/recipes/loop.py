"""The one optimisation loop every recipe uses: a recipe is an ordered list of ``Stage``s.

A stage supplies its optimisers, learning-rate schedule, losses and (optionally) a densification strategy;
the loop owns the iteration, progress bar, previews, checkpoints and resumption. Everything random inside a
stage draws from the stage's own ``torch.Generator``, whose state is checkpointed, so a run that is killed and
resumed ends with the same parameters as one that was never interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from ..gaussians.strategy import DensifyStrategy
from ..runs import RunDir, load_optimizer, optimizer_tensors
from .scene import Scene4D

LossFn = Callable[[Scene4D, int, torch.Generator], tuple[dict[str, Tensor], dict]]


@dataclass
class Stage:
    """One optimisation stage.

    name: folder name under ``DIR/stages``. iterations: steps in this stage.
    prepare: called once when the stage starts fresh (not on resume) and may return a changed scene
      (e.g. attach a deformation field).
    make_optimizers: builds the optimisers for the scene (names are checkpoint keys).
    learning_rates: step -> {optimiser name: lr, or a list with one lr per parameter group}, applied before
      every step (a pure function of the step, so resuming needs no scheduler state).
    losses: (scene, step, generator) -> (named weighted losses, render meta); their sum is minimised.
    strategy: densification strategy acting on ``scene.gaussians`` (None: fixed set of Gaussians).
    preview: (scene, step, folder) -> None, called every ``preview_every`` steps and at the end.
    """

    name: str
    iterations: int
    make_optimizers: Callable[[Scene4D], dict[str, torch.optim.Optimizer]]
    losses: LossFn
    learning_rates: Callable[[int], dict[str, float]] = lambda step: {}
    prepare: Callable[[Scene4D], Scene4D] | None = None
    strategy: DensifyStrategy | None = None
    preview: Callable[[Scene4D, int, object], None] | None = None
    checkpoint_every: int = 200
    preview_every: int = 0
    seed: int = 0
    stats: dict = field(default_factory=dict)


def _checkpoint(run: RunDir, stage: Stage, scene: Scene4D, optimizers: dict, generator: torch.Generator, step: int, elapsed: float, complete: bool) -> None:
    tensors = {f"scene.{k}": v for k, v in scene.tensors().items()}
    groups = {}
    for name, opt in optimizers.items():
        t, meta = optimizer_tensors(f"optim.{name}", opt)
        tensors.update(t)
        groups[name] = meta
    if stage.strategy is not None:
        tensors.update({f"strategy.{k}": v for k, v in stage.strategy.state_dict().items()})
    tensors["rng"] = generator.get_state()
    state = {
        "stage": stage.name,
        "step": step,
        "iterations": stage.iterations,
        "complete": complete,
        "seconds": elapsed,
        "num_gaussians": len(scene.gaussians),
        "optimizers": groups,
    }
    run.save_checkpoint(stage.name, tensors, state)


def _scene_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("scene.") :]: v for k, v in tensors.items() if k.startswith("scene.")}


def run_stages(
    run: RunDir,
    stages: list[Stage],
    init_scene: Callable[[], Scene4D],
    load_scene: Callable[[dict[str, Tensor]], Scene4D],
    quiet: bool = False,
    stop_after_step: int | None = None,
) -> tuple[Scene4D, dict]:
    """Run (or resume) the stages in order. Returns the final scene and per-stage stats.

    stop_after_step: for tests, return right after the checkpoint written at that global step, as a kill
    would leave the run (the stage is not marked complete).
    """
    scene: Scene4D | None = None
    last_complete: dict[str, Tensor] | None = None
    stats: dict = {}
    global_offset = 0
    for stage in stages:
        ckpt = run.load_checkpoint(stage.name)
        if ckpt is not None and ckpt[1].get("complete"):
            last_complete = ckpt[0]
            stats[stage.name] = {"seconds": ckpt[1]["seconds"], "iterations": ckpt[1]["step"], "resumed": "complete"}
            global_offset += stage.iterations
            scene = None
            continue
        if scene is None:
            scene = load_scene(_scene_tensors(last_complete)) if last_complete is not None else init_scene()
        generator = torch.Generator().manual_seed(stage.seed)
        start, elapsed = 0, 0.0
        if ckpt is not None:
            tensors, state = ckpt
            scene = load_scene(_scene_tensors(tensors))
            optimizers = stage.make_optimizers(scene)
            for name, opt in optimizers.items():
                load_optimizer(f"optim.{name}", opt, tensors, state["optimizers"][name])
            if stage.strategy is not None:
                stage.strategy.load_state_dict({k[len("strategy.") :]: v for k, v in tensors.items() if k.startswith("strategy.")})
            generator.set_state(tensors["rng"])
            start, elapsed = state["step"], state["seconds"]
            run.log(f"stage {stage.name}: resuming at step {start}/{stage.iterations}")
        else:
            if stage.prepare is not None:
                scene = stage.prepare(scene)
            optimizers = stage.make_optimizers(scene)
            run.log(f"stage {stage.name}: starting ({stage.iterations} steps, {len(scene.gaussians)} Gaussians)")
        preview_dir = run.stage_dir(stage.name) / "preview"
        finished = _loop(run, stage, scene, optimizers, generator, start, elapsed, preview_dir, quiet, stop_after_step, global_offset)
        if not finished:
            return scene, stats
        stats[stage.name] = {"seconds": stage.stats["seconds"], "iterations": stage.iterations}
        global_offset += stage.iterations
    if scene is None:
        scene = load_scene(_scene_tensors(last_complete))
    return scene, stats


def _loop(run, stage, scene, optimizers, generator, start, elapsed, preview_dir, quiet, stop_after_step, global_offset) -> bool:
    columns = [
        TextColumn(f"[bold]{stage.name}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[n]} G  {task.fields[rate]:.1f} it/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    t_start = time.perf_counter()
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task(stage.name, total=stage.iterations, completed=start, loss=0.0, n=len(scene.gaussians), rate=0.0)
        for step in range(start, stage.iterations):
            for name, lr in stage.learning_rates(step).items():
                groups = optimizers[name].param_groups
                for group, value in zip(groups, lr if isinstance(lr, (list, tuple)) else [lr] * len(groups)):
                    group["lr"] = value
            losses, info = stage.losses(scene, step, generator)
            total = sum(losses.values())
            if stage.strategy is not None:
                stage.strategy.step_pre_backward(info)
            total.backward()
            if stage.strategy is not None:
                stage.strategy.step_post_backward(scene.gaussians, optimizers, step, info, generator)
            for opt in optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            done = step + 1
            now = time.perf_counter()
            progress.update(task, completed=done, loss=float(total.detach()), n=len(scene.gaussians), rate=(done - start) / max(now - t_start, 1e-9))
            if stage.preview is not None and stage.preview_every > 0 and done % stage.preview_every == 0:
                stage.preview(scene, done, preview_dir)
            if done < stage.iterations and stage.checkpoint_every > 0 and done % stage.checkpoint_every == 0:
                _checkpoint(run, stage, scene, optimizers, generator, done, elapsed + now - t_start, complete=False)
                if stop_after_step is not None and global_offset + done >= stop_after_step:
                    return False
    stage.stats["seconds"] = elapsed + time.perf_counter() - t_start
    if stage.preview is not None:
        stage.preview(scene, stage.iterations, preview_dir)
    _checkpoint(run, stage, scene, optimizers, generator, stage.iterations, stage.stats["seconds"], complete=True)
    run.log(f"stage {stage.name}: complete in {stage.stats['seconds']:.1f} s, {len(scene.gaussians)} Gaussians")
    return True
