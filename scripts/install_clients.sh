#!/usr/bin/env bash
# Installs the real CLI clients the `clients` tests drive (Codex CLI and Claude Code), pinned, from the npm
# registry into .cache/clients (git-ignored). Quick when they are already there. Prints the directory
# holding the executables (`codex`, `claude`) on its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CODEX_VERSION="0.171.0"
CLAUDE_CODE_VERSION="2.1.332"
prefix=".cache/clients"
bin="$prefix/node_modules/.bin"

installed() {
    [ "$("$bin/codex" --version 2>/dev/null)" = "codex-cli $CODEX_VERSION" ] &&
        [ "$("$bin/claude" --version 2>/dev/null)" = "$CLAUDE_CODE_VERSION (Claude Code)" ]
}

if ! installed; then
    if ! command -v npm >/dev/null; then
        echo "the clients tests need npm (Node.js 18+) to install @openai/codex and @anthropic-ai/claude-code" >&2
        exit 1
    fi
    mkdir -p "$prefix"
    # Claude Code's postinstall copies its platform binary over the bin stub: scripts must run.
    npm install --prefix "$prefix" --no-audit --no-fund --no-save --no-package-lock --loglevel=error \
        --ignore-scripts=false "@openai/codex@$CODEX_VERSION" "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2
    if ! installed; then
        echo "installed the clients into $prefix, but they do not run or report other versions:" >&2
        "$bin/codex" --version >&2 || true
        "$bin/claude" --version >&2 || true
        exit 1
    fi
fi
cd "$bin" && pwd
