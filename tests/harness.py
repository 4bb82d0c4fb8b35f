"""Starting real processes for the integration tests: the mock upstream and the proxy under uvicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

MASTER_KEY = "sk-test-master"
EXTRA_KEY = "sk-test-extra"
MOCK_WINDOW_TOKENS = 32_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(args: list[str], ready_path: str, log_path: Path, env: dict[str, str] | None = None,
                 timeout_s: float = 60.0) -> Server:
    """The server's stdout and stderr go to a pipe, as under Docker or systemd (a regular file would let
    RLIMIT_FSIZE stop writes that a pipe takes), copied into `log_path` by a thread."""
    port = free_port()
    log_path.write_bytes(b"")
    process = subprocess.Popen([sys.executable, "-m", "proxy.cli", *args, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    threading.Thread(target=_copy, args=(process.stdout, log_path), daemon=True).start()
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if httpx.get(server.url + ready_path, timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


def _copy(pipe: IO[bytes], path: Path) -> None:
    with pipe, path.open("ab", buffering=0) as log:
        while chunk := pipe.read1(2**16):
            log.write(chunk)


@dataclass
class Mock:
    server: Server

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.server.url + "/mock/stats").json()

    def reset(self) -> None:
        httpx.post(self.server.url + "/mock/reset").raise_for_status()


def proxy_config(mock: Mock, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_list": [{"model_name": "mock", "litellm_params": {
            "model": "openai/mock-model", "api_base": mock.base_url, "api_key": "os.environ/MOCK_API_KEY"}}],
        "server": {"master_key": MASTER_KEY, "api_keys": [EXTRA_KEY]},
        "upstream": {"timeout_s": 1, "max_retries": 2, "retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


StartProxy = Callable[..., Server]


RLM_MODEL_INFO = {"max_input_tokens": MOCK_WINDOW_TOKENS, "input_cost_per_token": 1e-6,
                  "output_cost_per_token": 2e-6}


def rlm_config(mock: Mock, **overrides: Any) -> dict[str, Any]:
    """The proxy in front of the mock, which knows its window (32k tokens) and a price."""
    config = proxy_config(mock, **overrides)
    config["model_list"][0]["model_info"] = RLM_MODEL_INFO
    config["upstream"] = {**config["upstream"], "timeout_s": 30}
    config.setdefault("sandbox", {}).setdefault("workers", 1)
    return config


def child_pids(pid: int, zombies: bool = False) -> set[int]:
    """Processes whose parent is `pid`: the live ones, or (zombies=True) the dead ones not yet reaped."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and (fields[0] == "Z") == zombies:
            found.add(int(entry.name))
    return found


class Redis:
    """A real redis-server on a free port, without persistence; it can be killed and started again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", str(self._workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server) -> Samples:
    """The proxy's /metrics as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def unexpected_output(server: Server) -> list[str]:
    """The server's output lines other than uvicorn's own `INFO:` lines (tracebacks, warnings, errors)."""
    return [line for line in server.log().splitlines() if not line.startswith("INFO:")]
