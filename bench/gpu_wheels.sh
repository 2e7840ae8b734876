#!/usr/bin/env bash
# Wheels for bench/gpu_check.py on a GPU machine that cannot reach a package index: the packages gen4d needs that
# its Python 3.12 / PyTorch image lacks (diffusers, gsplat, omegaconf, plyfile, trimesh, PyMCubes; not imageio-ffmpeg: its 68 MB wheel does not fit
# the 64 MiB a device call carries, so the GPU check writes no mp4).
# Run here (where pip works), then carry .whl to the GPU machine and install it with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
pip_get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d .whl "$@"; }
pip_get "diffusers==0.42.1" "omegaconf==2.4.0" "plyfile==1.1.5" "trimesh==5.2.0" \
        "pymcubes==0.1.6" "gsplat==1.5.3"
ls -la .whl
