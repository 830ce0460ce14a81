#!/usr/bin/env bash
# Installs the project into ./.venv from scratch and runs the main job on its embedded default:
# an espeak-ng corpus, a small codec, pre-tokenised shards, speech-LM phases 1 and 2, and ASR /
# TTS / codec scored by offline judges (see mimo_jax/demo.py). Extra flags go to the job, e.g.
# --workdir=DIR or --recipe=learn.
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/apt_install.sh espeak-ng
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The judges (pocketsphinx, resemblyzer, speechmos) are the eval extra; resemblyzer needs torch,
# and the pinned CPU build goes in first so that pip never pulls a CUDA one.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[eval]"
exec .venv/bin/python -m mimo_jax.demo "$@"
