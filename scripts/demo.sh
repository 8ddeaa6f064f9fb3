#!/usr/bin/env bash
# One command from a fresh clone: set up, build a sample shelter database, label it, show it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/labeler demo "$@"
