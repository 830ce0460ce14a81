#!/usr/bin/env bash
# Installs the project into ./.venv from scratch and runs the main job on its embedded default
# (today: the tiny backbone demo, see mimo_jax/demo.py). Extra flags go to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python -m mimo_jax.demo "$@"
