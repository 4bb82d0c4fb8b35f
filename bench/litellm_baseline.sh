#!/usr/bin/env bash
# Baseline for bench/passthrough.py: LiteLLM Proxy in front of the same mock upstream.
#
#   bench/litellm_baseline.sh --setup-only          # only create the venv and install litellm[proxy]
#   bench/litellm_baseline.sh MOCK_URL [PORT]       # install if needed, then run LiteLLM Proxy (foreground)
#
# MOCK_URL is the mock upstream, with or without its /v1 suffix (e.g. http://127.0.0.1:8001).
# LiteLLM Proxy gets its own venv so that its pinned dependencies never touch the project's .venv.
# Env: LITELLM_VENV (default /tmp/litellm-proxy-venv), LITELLM_WORKDIR (where the config goes).
set -euo pipefail

VENV="${LITELLM_VENV:-/tmp/litellm-proxy-venv}"

setup() {
    if [[ -x "$VENV/bin/litellm" ]]; then
        return
    fi
    echo "litellm_baseline: installing litellm[proxy] into $VENV (takes a few minutes)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip >&2
    "$VENV/bin/pip" install --quiet 'litellm[proxy]' >&2
}

if [[ "${1:-}" == "--setup-only" ]]; then
    setup
    "$VENV/bin/litellm" --version 2>/dev/null || "$VENV/bin/pip" show litellm | head -2
    exit 0
fi
if [[ $# -lt 1 ]]; then
    sed -n '2,9p' "$0" >&2
    exit 2
fi

MOCK_URL="${1%/}"
[[ "$MOCK_URL" == */v1 ]] || MOCK_URL="$MOCK_URL/v1"
PORT="${2:-4100}"
setup

WORKDIR="${LITELLM_WORKDIR:-$(mktemp -d /tmp/litellm-baseline.XXXXXX)}"
mkdir -p "$WORKDIR"
CONFIG="$WORKDIR/litellm_config.yaml"
cat >"$CONFIG" <<EOF
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock-model
      api_base: "$MOCK_URL"
      api_key: sk-anything
  # /v1/responses bridged to the mock's chat completions: an openai/ model would go to the Responses API.
  - model_name: mock-responses
    litellm_params:
      model: openai/chat_completions/mock-model
      api_base: "$MOCK_URL"
      api_key: sk-anything
litellm_settings:
  # /v1/messages bridged to chat completions (for openai/ models it would go to the Responses API).
  use_chat_completions_url_for_anthropic_messages: true
general_settings:
  master_key: sk-bench
EOF

echo "LiteLLM Proxy: http://127.0.0.1:$PORT (model mock -> $MOCK_URL, key sk-bench, config $CONFIG)"
# Without LITELLM_LOCAL_MODEL_COST_MAP LiteLLM fetches its price map from the network at start-up.
# exec: the caller's PID is LiteLLM itself, so stopping that PID stops the proxy.
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec "$VENV/bin/litellm" --config "$CONFIG" --host 127.0.0.1 --port "$PORT"
