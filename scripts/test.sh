#!/usr/bin/env bash
# One command from a fresh clone: set up, start the database servers, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/start-databases.sh
exec .venv/bin/python -m pytest "$@"
