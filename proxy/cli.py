"""`rlm-proxy serve` and `rlm-proxy mock-upstream`."""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
from typing import Any

import uvicorn
import uvicorn.config

from bench.paper import cli as bench_cli
from proxy.admission import PROCESSES_ENV
from proxy.config import ConfigError, load_settings
from proxy.http_server import PROTOCOLS, protocol_path
from proxy.metrics import MULTIPROC_ENV


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlm-proxy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--config", help="YAML config file (default: $RLM_PROXY_CONFIG, else defaults)")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--http", choices=["auto", *PROTOCOLS], default="auto",
                       help="HTTP/1.1 implementation (auto: httptools when installed, else h11)")

    mock = commands.add_parser("mock-upstream", help="run the mock OpenAI-compatible model server")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8001)
    mock.add_argument("--latency-ms", type=float, default=0.0,
                      help="from a request's arrival to its response (to its first byte when streaming)")
    mock.add_argument("--stream-deltas", type=int, default=4)
    mock.add_argument("--tokens-per-second", type=float, default=None,
                      help="write replies at this rate, streamed a token at a time (default: at once)")
    mock.add_argument("--context-window-tokens", type=int, default=None)
    mock.add_argument("--error-rate", type=float, default=0.0)
    mock.add_argument("--error-status", type=int, default=500)
    mock.add_argument("--seed", type=int, default=0)
    mock.add_argument("--reply", default=None, help="fixed reply text")
    mock.add_argument("--model-name", default="mock-model")

    bench_cli.add_arguments(commands.add_parser("bench", help="run the paper's experiments (bench/paper)"))

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "bench":
        return bench_cli.run(args)
    return _mock(args)


def _serve(args: argparse.Namespace) -> int:
    if args.config:
        os.environ["RLM_PROXY_CONFIG"] = args.config  # worker processes load the same file
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"rlm-proxy: {exc}", file=sys.stderr)
        return 2
    try:
        http = protocol_path(args.http)  # a path, so that worker processes import it themselves
    except ModuleNotFoundError as exc:
        print(f"rlm-proxy: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        os.environ[PROCESSES_ENV] = str(args.workers)  # they share the memory their sandboxes are sized from
        # Each worker writes its metric values to files here; a scrape of any worker sums them all.
        own_dir = not os.environ.get(MULTIPROC_ENV)
        if own_dir:
            os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="rlm-proxy-metrics-")
        try:
            uvicorn.run("proxy.app:create_app_from_env", factory=True, host=args.host, port=args.port,
                        workers=args.workers, log_level=args.log_level, access_log=False, http=http,
                        log_config=log_config())
        finally:
            if own_dir:
                shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)
    else:
        from proxy.app import create_app

        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                    access_log=False, http=http, log_config=log_config())
    return 0


def log_config() -> dict[str, Any]:
    """uvicorn's logging, and the admin API's audit log (`rlm_proxy.audit`) through its handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["rlm_proxy.audit"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _mock(args: argparse.Namespace) -> int:
    from proxy.mock_upstream import MockSettings, run_mock

    if args.tokens_per_second is not None and args.tokens_per_second <= 0:
        print("rlm-proxy: --tokens-per-second must be positive", file=sys.stderr)
        return 2
    settings = MockSettings(latency_ms=args.latency_ms, stream_deltas=args.stream_deltas,
                            tokens_per_second=args.tokens_per_second,
                            context_window_tokens=args.context_window_tokens, error_rate=args.error_rate,
                            error_status=args.error_status, seed=args.seed, reply=args.reply,
                            model_name=args.model_name)
    run_mock(settings, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
