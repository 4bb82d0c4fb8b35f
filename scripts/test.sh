#!/usr/bin/env bash
# Installs everything the tests need (Python packages into .venv; Redis, Prometheus, npm and Chromium from
# the distribution), lints, and runs the whole suite; arguments go to pytest.
RLM_PROXY_EXTRAS="[dev]"
source "$(dirname "$0")/bootstrap.sh"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v npm >/dev/null || missing+=(npm)  # installs the CLI clients (scripts/install_clients.sh)
[ -x /usr/bin/chromium ] || missing+=(chromium)  # the run viewer's browser tests (tests/test_viewer.py)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if ! command -v apt-get >/dev/null || { [ -n "$sudo" ] && ! command -v sudo >/dev/null; }; then
        echo "the tests need: ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
        exit 1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
