#!/usr/bin/env bash
# The main job on a CPU (≈4 min on 2 cores after install): Meta-World reach expert data → stages 1 → 2 → 3 on a
# tiny Qwen3-VL → async execution with a 2-tick simulated latency, against the scripted expert and zero action.
# Same as `make demo` (which runs `python -m xr0.cli demo`). Extra arguments go to `xr0 demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"   # headless rendering through Mesa (libegl1, libgl1-mesa-dri)
exec "${PYTHON:-.venv/bin/python}" -m xr0.cli demo "$@"
