#!/usr/bin/env bash
# Set up (with the scale-out executors, which tests/test_executors.py needs), then run every test: ctlib's
# unit tests and nbval re-executing the notebooks (CPU profile).
# Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/setup.sh" --scaleout | tail -n 1)"
cd "$root"
exec "$py" -m pytest tests notebooks --nbval --nbval-current-env --nbval-cell-timeout=1800 -p no:cacheprovider "$@"
