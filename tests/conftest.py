"""Session fixtures: the mock upstream and proxies, as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import yaml

from sandbox import PoolLimits, SandboxLimits, SandboxPool
from tests.harness import MOCK_WINDOW_TOKENS, Mock, Redis, Server, StartProxy, proxy_config, start_server


def _mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    log = tmp_path_factory.mktemp("mock") / "mock.log"
    server = start_server(["mock-upstream", "--context-window-tokens", str(MOCK_WINDOW_TOKENS)],
                          "/v1/models", log)
    yield Mock(server)
    server.stop()


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    yield from _mock(tmp_path_factory)


@pytest.fixture(scope="module")
def own_mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    """A mock for one module whose tests count its requests exactly: calls still arriving from another
    module's runs (a cancelled run's last sub-calls) cannot reach it."""
    yield from _mock(tmp_path_factory)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A real redis-server for one test module (a module may kill and restart it)."""
    server = Redis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def start_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartProxy]:
    servers: list[Server] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None,
              args: list[str] | None = None) -> Server:
        workdir = tmp_path_factory.mktemp("proxy")
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        server = start_server(["serve", "--config", str(config_path), *(args or [])], "/readyz",
                              workdir / "proxy.log",
                              env={"MOCK_API_KEY": "sk-upstream", **(env or {})})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session", params=["fast_path", "litellm"])
def proxy(request: pytest.FixtureRequest, mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    """The proxy in front of the mock, once per upstream backend."""
    return start_proxy(proxy_config(mock_upstream, upstream={"fast_path": request.param == "fast_path"}))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine_pool() -> AsyncIterator[SandboxPool]:
    """A sandbox pool for a module's engine tests (one warm worker, 5 s of CPU per block), in the module's
    event loop: its tests run there too (`pytest.mark.asyncio(loop_scope="module")`)."""
    pool = SandboxPool(SandboxLimits(cpu_s_per_block=5), PoolLimits(warm_workers=1))
    await pool.start()
    yield pool
    await pool.aclose()
