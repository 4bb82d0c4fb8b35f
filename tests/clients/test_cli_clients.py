"""The real CLI clients, installed from npm and unmodified, against the real proxy and the mock upstream:
Codex CLI speaks /v1/responses, Claude Code /v1/messages. Each must print the mock's answer for a short
prompt (direct mode) and for a 1 MB needle prompt (RLM mode)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.mock_policy import needle_prompt
from tests.clients.cli import CLIENTS, INSTALL_TIMEOUT_S, Run, install
from tests.harness import MASTER_KEY, Mock, Samples, Server, StartProxy, rlm_config, scrape

CLIENT_TIMEOUT_S = 150
# The first test also waits for the install (tests/clients/cli.py: INSTALL_TIMEOUT_S).
pytestmark = [pytest.mark.clients, pytest.mark.timeout(INSTALL_TIMEOUT_S + CLIENT_TIMEOUT_S + 30)]

# Claude Code's default model name in the pinned version: Claude Code users keep it, so the proxy lists it.
CLAUDE_MODEL = "claude-opus-5-5"
MODELS = {"codex": "mock", "claude": CLAUDE_MODEL}
KEY = "quiet-lantern"
SHORT_VALUE, LONG_VALUE = "5150", "8675309"
LONG_CHARS = 1_000_000


@pytest.fixture(scope="session")
def client_bin() -> Path:
    try:
        return install()
    except RuntimeError as exc:  # CI runs this tier: a missing client is a failure, never a skip
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def clients_proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    config = rlm_config(mock_upstream)
    config["model_list"].append({**copy.deepcopy(config["model_list"][0]), "model_name": CLAUDE_MODEL})
    return start_proxy(config)


Ask = Callable[[str, str], Run]


@pytest.fixture
def ask(client_bin: Path, clients_proxy: Server, tmp_path: Path) -> Ask:
    """Runs a client, in a fresh HOME, on a prompt."""
    def run(client: str, prompt: str) -> Run:
        return CLIENTS[client](client_bin, tmp_path / "home", clients_proxy.url, MASTER_KEY, MODELS[client],
                               prompt, CLIENT_TIMEOUT_S)

    return run


def _requests(samples: Samples, mode: str) -> float:
    return sum(value for (name, labels), value in samples.items()
               if name == "rlm_proxy_requests_total" and ("mode", mode) in labels)


def _subcalls(samples: Samples) -> float:
    return sum(value for (name, _), value in samples.items() if name == "rlm_proxy_rlm_subcalls_total")


def _answer(result: Run) -> str:
    # The clients echo the prompt on stderr: the tail holds the errors.
    assert result.returncode == 0, (
        f"exit status {result.returncode}\nstdout:\n{result.stdout}\nstderr (end):\n{result.stderr[-3000:]}")
    return result.stdout.strip()


@pytest.mark.parametrize("client", CLIENTS)
def test_short_prompt_is_answered_in_direct_mode(ask: Ask, clients_proxy: Server, client: str) -> None:
    before = scrape(clients_proxy)
    result = ask(client, needle_prompt(2_000, KEY, SHORT_VALUE))
    assert _answer(result) == SHORT_VALUE
    after = scrape(clients_proxy)
    assert _requests(after, "direct") - _requests(before, "direct") == 1
    assert _requests(after, "rlm") == _requests(before, "rlm")


@pytest.mark.parametrize("client", CLIENTS)
def test_one_megabyte_needle_is_found_in_rlm_mode(ask: Ask, clients_proxy: Server, mock_upstream: Mock,
                                                  client: str) -> None:
    before, mock_before = scrape(clients_proxy), mock_upstream.stats()["requests"]
    result = ask(client, needle_prompt(LONG_CHARS, KEY, LONG_VALUE, depth=0.6))
    assert _answer(result) == LONG_VALUE
    after = scrape(clients_proxy)
    assert _requests(after, "rlm") - _requests(before, "rlm") == 1
    assert _requests(after, "direct") == _requests(before, "direct")
    # The root model split the text among sub-calls (about 100k characters each); the mock played the root
    # twice (code, then the answer) and the sub-model (chunks of identical filler come from the cache).
    assert _subcalls(after) - _subcalls(before) >= LONG_CHARS // 120_000
    assert mock_upstream.stats()["requests"] - mock_before >= 3
