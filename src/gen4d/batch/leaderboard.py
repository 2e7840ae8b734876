"""``gen4d eval BATCH_DIR --data C4D``: every finished run of a batch scored on its Consistent4D object, one table.

Each finished job's run is evaluated by :func:`gen4d.recipes.evaluate.run_eval` (exactly what ``gen4d eval RUN``
does, writing ``RUN/eval/``), on the object named like the run's input folder (``gen4d video C4D/input/<object>``)
unless ``--object`` names one. The rows and their mean over the scored objects go to ``DIR/leaderboard.json`` and
``DIR/leaderboard.md``. A run that cannot be scored (no such object, not finished) keeps its one-line error in its
row; the others are scored.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from .. import Gen4DError
from ..files import write_json, write_text
from ..recipes.evaluate import build_eval_config, run_eval, selected_metrics


def is_batch_dir(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / "batch.json").is_file()


def _object_name(run_dir: Path) -> str:
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    source = str(config.get("input") or config.get("data") or "") if isinstance(config, dict) else ""
    if not source:
        raise Gen4DError(f"{run_dir}/config.yaml names no input; pass --object NAME")
    return Path(source).stem if Path(source).suffix else Path(source).name


def evaluate_batch(batch_dir: str | Path, base: dict, overrides: list[str], quiet: bool = True, console: Console | None = None) -> dict:
    """Score every finished job of a batch (module docstring); returns what ``DIR/leaderboard.json`` holds."""
    batch_dir = Path(batch_dir)
    summary = json.loads((batch_dir / "batch.json").read_text())
    metrics = selected_metrics(build_eval_config(overrides, base))
    rows = []
    for job in summary["jobs"]:
        row: dict = {"job": job["name"], "object": "", **{m: None for m in metrics}, "error": ""}
        run_dir = Path(job["run_dir"])
        try:
            if job["status"] != "done":
                raise Gen4DError(f"the job is {job['status']}: rerun the batch to finish it")
            name = base.get("object") or _object_name(run_dir)
            row["object"] = name
            scores = run_eval(build_eval_config(overrides, {**base, "object": name}), run_dir, quiet=quiet)
            row.update({m: scores[m] for m in metrics})
        except Gen4DError as e:
            row["error"] = f"error: {e}"
        rows.append(row)
    scored = [r for r in rows if not r["error"]]
    mean = {m: sum(r[m] for r in scored if r[m] is not None) / max(1, sum(r[m] is not None for r in scored)) for m in metrics}
    board = {"batch": str(batch_dir), "metrics": metrics, "rows": rows, "mean": mean if scored else {}, "scored": len(scored)}
    write_json(batch_dir / "leaderboard.json", board)
    write_text(batch_dir / "leaderboard.md", leaderboard_markdown(board))
    (console or Console(soft_wrap=True)).print(leaderboard_table(board))
    return board


def _row_cells(board: dict, row: dict) -> list[str]:
    return [row["job"], row["object"], *("" if row[m] is None else f"{row[m]:.4f}" for m in board["metrics"]), row["error"]]


def _mean_cells(board: dict) -> list[str]:
    return [f"mean ({board['scored']})", "", *(f"{board['mean'][m]:.4f}" if board["mean"] else "" for m in board["metrics"]), ""]


def leaderboard_table(board: dict) -> Table:
    table = Table(title=f"Consistent4D: {board['batch']}")
    for h in ("job", "object", *(m.upper() for m in board["metrics"]), "error"):
        table.add_column(h, overflow="fold")
    for row in board["rows"]:
        table.add_row(*_row_cells(board, row))
    table.add_row(*_mean_cells(board), style="bold")
    return table


def leaderboard_markdown(board: dict) -> str:
    headers = ["job", "object", *(m.upper() for m in board["metrics"]), "error"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells in [*(_row_cells(board, r) for r in board["rows"]), _mean_cells(board)]:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
