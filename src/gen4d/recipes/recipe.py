"""What a recipe declares, so that the command line, the preflight and ``gen4d models`` are built from it.

A recipe module defines one :class:`Recipe` (its ``RECIPE``); :data:`gen4d.recipes.RECIPES` lists them all. The CLI
makes ``gen4d <command> INPUT --recipe NAME`` for every command a recipe serves, lists recipes and presets in
``--help``, maps the positional input, ``--iters``, ``--seed``, ``--device`` and the recipe's own options onto its
configuration, checks :attr:`Recipe.requirements` before any work, and calls :attr:`Recipe.run`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import Gen4DError
from ..config import merge_config
from ..models.preflight import Requirement


@dataclass(frozen=True)
class Option:
    """A command-line option of a recipe: ``--flag VALUE`` sets the configuration field ``key``."""

    flag: str
    key: str
    help: str
    path: bool = False
    """The value is a path: made absolute (config.yaml then names the same file from any working directory)."""


@dataclass(frozen=True)
class Recipe:
    """A recipe: typed configuration, presets, requirements and the function that runs it."""

    name: str
    commands: tuple[str, ...]
    """The commands that run it (``image``, ``video``, ``text``, ``reconstruct``, ``motion train``, ...)."""
    description: str
    config: type
    """The configuration dataclass (every field settable as ``key=value``)."""
    presets: dict[str, list[str]]
    """Named presets: dotlist overrides of the defaults."""
    run: Callable[..., dict]
    """``run(cfg, out, command=..., quiet=..., **extra) -> metrics``."""
    input_key: str = "input"
    """Configuration field of the command's positional argument."""
    input_is_path: bool = True
    inputs: dict[str, tuple[str, bool]] = field(default_factory=dict)
    """Per command, where its positional argument goes and whether it is a path (e.g. ``text`` -> the prompt,
    ``image`` -> the image file), overriding ``input_key`` / ``input_is_path``."""
    per_command: dict[str, dict] = field(default_factory=dict)
    """Fixed settings per command (e.g. ``{"video": {"mode": "video"}}``)."""
    options: tuple[Option, ...] = ()
    iters: Callable[[int], dict] | None = None
    """``--iters N`` -> nested configuration values (how the steps split over the stages); None: no ``--iters``."""
    shared_keys: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"seed": ("seed",), "device": ("device",)})
    """Where ``--seed`` and ``--device`` go (a chaining recipe may copy them into several sections)."""
    check: Callable[[Any], None] = lambda cfg: None
    """Cheap validation of a configuration and its inputs (raises Gen4DError; writes nothing), run first."""
    requirements: Callable[[Any], list[Requirement]] = lambda cfg: []
    """The models and packages a run of a configuration needs (checked after ``check``, before any work)."""
    headline: Callable[[dict], str] = lambda metrics: ""
    """One line summarising a finished run's metrics."""
    outputs: Callable[[Any], list[tuple[str, str]]] = lambda out: []
    """``(label, where)`` lines the summary adds for the run folder ``out`` (beyond metrics and exports)."""
    default_preset: str = "default"
    evaluated: bool = False
    """The run renders held-out test views to ``DIR/eval/test``."""

    def build_config(self, preset: str, overrides: list[str], base: dict | None = None):
        """Defaults <- preset <- ``base`` (command-line values) <- ``key=value`` overrides."""
        return merge_config(self.config, self.presets, preset, overrides, base)

    def command_base(self, command: str | None = None, input: str | None = None, seed: int | None = None,
                     device: str | None = None, iters: int | None = None, options: dict[str, str] | None = None) -> dict:
        """Nested configuration values of a command line: the positional input, ``--seed``, ``--device``,
        ``--iters`` and the recipe's own options (``{flag: value}``), plus the command's fixed settings."""
        base: dict = {}
        merge_nested(base, json.loads(json.dumps(self.per_command.get(command or "", {}))))
        if input is not None:
            key, is_path = self.inputs.get(command or "", (self.input_key, self.input_is_path))
            set_key(base, key, str(Path(input).resolve()) if is_path else input)
        for name, value in (("seed", seed), ("device", device)):
            if value is not None:
                for key in self.shared_keys[name]:
                    set_key(base, key, value)
        if iters is not None:
            merge_nested(base, self.iters_overrides(iters))
        known = {o.flag: o for o in self.options}
        for flag, value in (options or {}).items():
            if value is None:
                continue
            if flag not in known:
                raise Gen4DError(f"{flag} is not an option of the {self.name} recipe")
            o = known[flag]
            set_key(base, o.key, str(Path(value).resolve()) if o.path else value)
        return base

    def iters_overrides(self, iters: int) -> dict:
        if self.iters is None:
            raise Gen4DError(f"the {self.name} recipe takes no --iters; set its step counts with key=value")
        if iters < 1:
            raise Gen4DError(f"--iters must be at least 1, got {iters}")
        return self.iters(iters)


def set_key(base: dict, dotted: str, value) -> None:
    """``base["a"]["b"] = value`` for ``dotted = "a.b"``."""
    *parents, last = dotted.split(".")
    node = base
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def merge_nested(into: dict, extra: dict) -> dict:
    """Deep-merge ``extra`` into ``into`` (in place) and return it."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge_nested(into[k], v)
        else:
            into[k] = v
    return into
