#!/usr/bin/env bash
# Installs everything the tests need into .venv, lints, and runs the whole suite; arguments go to pytest.
RLM_PROXY_EXTRAS="[dev]"
source "$(dirname "$0")/bootstrap.sh"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
