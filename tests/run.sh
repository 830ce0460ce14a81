#!/usr/bin/env bash
# Installs the project and its test dependencies into ./.venv from scratch, then runs the suite.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# espeak-ng synthesises the speech corpus the tests and the demo train on; shellcheck lints tpu_setup/.
bash experiments/apt_install.sh espeak-ng shellcheck
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The pinned CPU torch goes in first so that transformers never pulls a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# Two workers, each taking whole files (module fixtures are built once); `-n 0` runs serially.
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
