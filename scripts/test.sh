#!/usr/bin/env bash
# One command from a fresh clone: set up, lint and type-check, start the database servers, run
# every test. CI runs exactly this (.ci/run); a lint or type error fails it like a test does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test.sh: ruff check ." >&2
.venv/bin/ruff check .
echo "test.sh: mypy" >&2
.venv/bin/mypy
echo "test.sh: lint-imports (the layers in pyproject.toml)" >&2
.venv/bin/lint-imports
bash scripts/start-databases.sh
exec .venv/bin/python -m pytest "$@"
