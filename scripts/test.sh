#!/usr/bin/env bash
# The project's test command (README "Running the tests"): static checks, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
mypy
pytest "$@"
