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
# pip compiles every installed module to bytecode on one core (~75 of its ~110 s here); skip
# that and compile the packages on every core instead. Files that do not compile are left as pip
# leaves them (torch ships a Python 3.12-only test module), hence the `|| true`.
.venv/bin/python -m pip install --quiet --no-compile "torch==2.13.0"
.venv/bin/python -m pip install --quiet --no-compile -e ".[eval]"
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
exec .venv/bin/python -m mimo_jax.demo "$@"
