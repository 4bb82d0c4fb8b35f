# Sourced by the other scripts: makes .venv with the project installed (extras in $RLM_PROXY_EXTRAS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
        # Debian and Ubuntu ship venv separately; install it when we are allowed to.
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "python3 -m venv failed: install your distribution's python3-venv package" >&2
            exit 1
        fi
        python3 -m venv .venv
    fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${RLM_PROXY_EXTRAS:-}"

# The sandbox workers' seccomp filter needs libseccomp2 (without it they run behind fewer walls, and
# /readyz says so).
if ! .venv/bin/python -c "import pyseccomp" 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp2 >/dev/null
    else
        echo "warning: libseccomp is missing (Debian/Ubuntu: apt-get install libseccomp2); sandbox workers" \
             "will run without their seccomp filter" >&2
    fi
fi
