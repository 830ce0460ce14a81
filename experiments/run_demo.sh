#!/usr/bin/env bash
# Installs the project into ./.venv from scratch and runs the main job on its embedded default:
# an espeak-ng corpus, a tiny codec, pre-tokenised shards, speech-LM phases 1 and 2, and a TTS /
# ASR sample (see mimo_jax/demo.py). Extra flags go to the job, e.g. --workdir=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/apt_install.sh espeak-ng
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python -m mimo_jax.demo "$@"
