"""Running the real CLI clients, Codex CLI and Claude Code, against a proxy: each in a fresh HOME, with
tools and command execution off and no network traffic but to the proxy (see WIRE.md next to this file)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_clients.sh"
CODEX_KEY_ENV = "RLM_PROXY_KEY"
INSTALL_TIMEOUT_S = 600  # about 800 MB from the npm registry on first use

Run = subprocess.CompletedProcess[str]
RunClient = Callable[..., Run]


def install() -> Path:
    """The directory holding `codex` and `claude`, installed (pinned) on first use."""
    result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True,
                            timeout=INSTALL_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{INSTALL_SCRIPT.name} could not install the CLI clients:\n{result.stderr}")
    return Path(result.stdout.splitlines()[-1])


def codex_config(base_url: str, model: str) -> str:
    """$CODEX_HOME/config.toml: the proxy as the only provider, no command execution, no retries (a
    failure shows at once), nothing sent anywhere else. JSON strings are valid TOML basic strings."""
    return f"""\
model = {json.dumps(model)}
model_provider = "rlmproxy"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false
web_search = "disabled"

[features]
shell_tool = false
goals = false
image_generation = false
apps = false
plugins = false

[agents]
enabled = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

[model_providers.rlmproxy]
name = "rlm-proxy"
base_url = {json.dumps(base_url)}
env_key = "{CODEX_KEY_ENV}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def run_codex(bin_dir: Path, home: Path, proxy_url: str, api_key: str, model: str, prompt: str,
              timeout_s: float) -> Run:
    """`codex exec` with the prompt on stdin (an argument is limited to 128 KiB); stdout is the answer."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(codex_config(proxy_url + "/v1", model))
    argv = [str(bin_dir / "codex"), "exec", "--strict-config", "--skip-git-repo-check", "--ephemeral",
            "--color", "never", "-"]
    return _run(argv, home, {"CODEX_HOME": str(codex_home), CODEX_KEY_ENV: api_key}, prompt, timeout_s)


def run_claude(bin_dir: Path, home: Path, proxy_url: str, api_key: str, model: str, prompt: str,
               timeout_s: float) -> Run:
    """`claude -p` with no tools and the prompt on stdin; stdout is the answer."""
    env = {
        "ANTHROPIC_BASE_URL": proxy_url,  # Claude Code appends /v1/messages
        "ANTHROPIC_API_KEY": api_key,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # else HEAD /api/hello and telemetry lookups
    }
    argv = [str(bin_dir / "claude"), "-p", "--tools", "", "--model", model, "--no-session-persistence"]
    return _run(argv, home, env, prompt, timeout_s)


CLIENTS: dict[str, RunClient] = {"codex": run_codex, "claude": run_claude}


def _run(argv: list[str], home: Path, env: dict[str, str], prompt: str, timeout_s: float) -> Run:
    # Only PATH from the caller: no real credentials, proxies or settings leak into the client.
    workdir = home / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(argv, input=prompt, capture_output=True, text=True, timeout=timeout_s, cwd=workdir,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **env})
