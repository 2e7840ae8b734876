"""Run the Khronos glTF validator (a Node package under ``tools/``) on an exported file.

Set up once with ``npm install --prefix tools`` from the repository root (needs Node.js). Another tools folder
can be chosen with the ``GEN4D_TOOLS_DIR`` environment variable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["tools_dir", "validator_installed", "validate_gltf"]


def tools_dir() -> Path:
    """The folder holding ``validate_gltf.mjs`` and ``node_modules`` (default: ``<repo>/tools``)."""
    env = os.environ.get("GEN4D_TOOLS_DIR")
    if env:
        return Path(env)
    # src/gen4d/export/validate.py -> repository root is three folders above this file's folder.
    return Path(__file__).resolve().parents[3] / "tools"


def validator_installed() -> bool:
    """Whether the validator's npm package is installed next to the script."""
    tools = tools_dir()
    return (tools / "validate_gltf.mjs").is_file() and (tools / "node_modules" / "gltf-validator").is_dir()


def validate_gltf(path: str | os.PathLike, timeout: float = 120.0) -> dict | None:
    """Validate a .glb / .gltf file; returns the validator's report, or None when node or the package is missing.

    The report is the validator's JSON: ``report["issues"]["numErrors"]``, ``["numWarnings"]`` and
    ``["messages"]`` (each with ``code``, ``message``, ``severity`` 0=error .. 3=hint, ``pointer``).
    Raises RuntimeError if the validator could not run on the file at all.
    """
    node = shutil.which("node")
    if node is None or not validator_installed():
        return None
    script = tools_dir() / "validate_gltf.mjs"
    proc = subprocess.run(
        [node, str(script), str(Path(path).resolve())],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    # Exit 0: valid; 1: a report with errors; anything else: the script could not validate.
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"glTF validator failed on {path} (exit {proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)
