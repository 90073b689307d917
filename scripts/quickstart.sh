#!/usr/bin/env bash
# Set up, then execute the quickstart notebook through papermill on the embedded demo data, on CPU.
# Leaves results/smoke/quickstart.ipynb (executed) and the run records beside it (results/smoke/runs).
# Extra arguments go to `ctlib run`, e.g.:  bash scripts/quickstart.sh -p device cuda
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/setup.sh" | tail -n 1)"
cd "$root"
exec "$py" -m ctlib run quickstart "$@"
