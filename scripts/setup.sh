#!/usr/bin/env bash
# Set up the kit: a virtual environment .venv at the repository root (unless a virtualenv or a conda
# env is already active), the complete pinned set of requirements.lock (every package, transitive ones
# included; generated from requirements.in, see its header), and ctlib itself (editable, --no-deps).
# Quick when nothing changed: a stamp of requirements.lock + pyproject.toml skips the install; a new lock
# changes the stamp and reinstalls.
# --scaleout also installs the optional scale-out executors of `ctlib reproduce` (submitit, Ray: the pinned
# set requirements-scaleout.lock, constrained by requirements.lock), with its own stamp; scripts/test.sh
# passes it because tests/test_executors.py needs them.
# Prints the Python to use as its last line.
set -euo pipefail
scaleout=0
for arg in "$@"; do
  case "$arg" in
    --scaleout) scaleout=1 ;;
    *) echo "setup: unknown option $arg (the only option is --scaleout)" >&2; exit 2 ;;
  esac
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != "base" ]; then
  py="$CONDA_PREFIX/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
  fi
  py="$root/.venv/bin/python"
fi

stamp_dir="$("$py" -c 'import sys; print(sys.prefix)')"
stamp="$stamp_dir/.ctlib-setup-stamp"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c "import ctlib, torch, torchvision, papermill, nbval" 2>/dev/null; then
  echo "setup: environment up to date ($py)" >&2
else
  echo "setup: installing pinned dependencies into $stamp_dir (a few minutes the first time)" >&2
  "$py" -m pip install -q --disable-pip-version-check -r requirements.lock 2>&1 | grep -v "is ignored" >&2 || true
  "$py" -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "is ignored" >&2 || true
  "$py" -c "import ctlib, torch, torchvision, papermill, nbval" || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
if [ "$scaleout" = 1 ]; then
  stamp="$stamp_dir/.ctlib-scaleout-stamp"
  want="$(cat requirements-scaleout.lock | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$py" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('submitit') and u.find_spec('ray')))"; then
    echo "setup: scale-out executors up to date" >&2
  else
    echo "setup: installing the scale-out executors (submitit, Ray) from requirements-scaleout.lock" >&2
    "$py" -m pip install -q --disable-pip-version-check -r requirements-scaleout.lock 2>&1 | grep -v "is ignored" >&2 || true
    "$py" -c "import submitit, ray" || { echo "setup: scale-out install failed" >&2; exit 1; }
    echo "$want" > "$stamp"
  fi
fi
echo "$py"
