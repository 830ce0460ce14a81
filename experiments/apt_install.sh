#!/usr/bin/env bash
# Installs the given Debian packages unless their commands are already on PATH (package name =
# command name for everything we need: espeak-ng, shellcheck). Used by run_demo.sh and tests/run.sh.
set -euo pipefail
missing=()
for pkg in "$@"; do
  command -v "$pkg" >/dev/null || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get install -y -q "${missing[@]}" >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null; }
