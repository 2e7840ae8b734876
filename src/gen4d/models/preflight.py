"""Preflight: before a command does any work, check that every model and optional package it will need is there.

A recipe declares its needs as :class:`Requirement` s (models by registry name, Hub id or folder; Python packages
of optional extras). :func:`check_requirements` checks them all and, when any is missing, raises **one**
:class:`~gen4d.Gen4DError` that names every missing one with the command that gets it, so a user never downloads
one model only to learn about the next.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from huggingface_hub import HfApi

from .. import Gen4DError
from .registry import REGISTRY, download_command, is_cached, offline, resolve


@dataclass(frozen=True)
class ModelRequirement:
    """A pretrained model a command loads: a registry name, Hub id or local folder."""

    name: str
    purpose: str = ""

    @property
    def label(self) -> str:
        return self.name

    def where(self) -> str:
        repo, _ = resolve(self.name)
        return repo

    def status(self) -> str:
        """``cached`` | ``downloadable`` | ``missing``."""
        if is_cached(self.name):
            return "cached"
        if offline():
            return "missing"
        repo, _ = resolve(self.name)
        try:
            HfApi().model_info(repo, timeout=10)
        except Exception:  # noqa: BLE001 - any failure (no network, gated, unknown id) means it cannot be fetched now
            return "missing"
        return "downloadable"

    def remedy(self) -> str:
        repo, spec = resolve(self.name)
        if spec is None and not ("/" in repo and not repo.startswith((".", "/"))):
            return f"{repo} does not exist"
        return f"`{download_command(repo)}`" + (" (or point gen4d at a local copy)" if self.name in REGISTRY else "")


@dataclass(frozen=True)
class PackageRequirement:
    """An optional Python package (and, with ``check``, data it needs such as model files)."""

    module: str
    """Import name, e.g. ``rembg``."""
    install: str
    """What installs it, e.g. ``pip install rembg`` or ``pip install -e ".[segment]"``."""
    purpose: str = ""
    check: Callable[[], str | None] | None = None
    """Extra check once the package imports: None when fine, else what is missing and how to get it."""

    @property
    def label(self) -> str:
        return f"package {self.module}"

    def where(self) -> str:
        return self.module

    def status(self) -> str:
        if importlib.util.find_spec(self.module) is None:
            return "missing"
        if self.check is not None and self.check() is not None:
            return "missing"
        return "installed"

    def remedy(self) -> str:
        if importlib.util.find_spec(self.module) is None:
            return f"`{self.install}`"
        problem = self.check() if self.check is not None else None
        return problem or f"`{self.install}`"


Requirement = ModelRequirement | PackageRequirement


def requirement_status(requirements: Iterable[Requirement]) -> list[tuple[Requirement, str]]:
    """``(requirement, status)`` for each distinct requirement, in order."""
    seen: dict[str, Requirement] = {}
    for r in requirements:
        seen.setdefault(f"{type(r).__name__}:{r.where()}", r)
    return [(r, r.status()) for r in seen.values()]


def check_requirements(requirements: Iterable[Requirement], command: str = "this command") -> None:
    """Raise one :class:`Gen4DError` naming every missing requirement (with how to get it), or return."""
    missing = [r for r, status in requirement_status(requirements) if status == "missing"]
    if not missing:
        return
    parts = []
    for r in missing:
        what = f"{r.label} ({r.where()})" if isinstance(r, ModelRequirement) and r.where() != r.name else r.label
        why = f" for {r.purpose}" if r.purpose else ""
        parts.append(f"{what}{why}: {r.remedy()}")
    where = " (offline: the Hub is unreachable)" if offline() and any(isinstance(r, ModelRequirement) for r in missing) else ""
    raise Gen4DError(f"{command} needs {len(missing)} missing item(s){where}: " + "; ".join(parts))
