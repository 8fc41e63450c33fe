#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export INCLUST_TRITON_ENV=${INCLUST_TRITON_ENV:-$PWD/.venv-triton}
exec .venv/bin/python -m pytest -q "$@"
