#!/usr/bin/env bash
# Installs the proxy into .venv and starts it; arguments go to `rlm-proxy serve`.
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/rlm-proxy serve "$@"
