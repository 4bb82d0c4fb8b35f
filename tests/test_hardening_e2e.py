"""Hostile model code through the real path: the openai SDK, the proxy under uvicorn (its output captured in
a log file, as under Docker or systemd), the engine, sandbox workers, and the mock upstream whose root
model runs the code given in an `[[exec:BASE64]]` tag and then echoes what the engine showed it."""

from __future__ import annotations

import base64
import concurrent.futures
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from proxy.mock_policy import ECHO_PREFIX
from tests.harness import MASTER_KEY, Mock, Server, StartProxy, child_pids, rlm_config, start_server
from tests.test_sandbox_hardening import RAISING_GENERATORS

RLM_ON = {"x-rlm-mode": "on"}
MIB = 2**20


@pytest.fixture(scope="module")
def proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    return start_proxy(rlm_config(mock_upstream, sandbox={"max_batch_mb": 32}))


def client(proxy: Server, **options: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=MASTER_KEY, max_retries=0,
                         timeout=options.get("timeout", 120))


def exec_message(code: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"[[exec:{base64.b64encode(code.encode()).decode()}]] Run it."}]


def run_code(proxy: Server, code: str) -> str:
    """What the root model saw after running `code` (or the answer, if the code gave one)."""
    completion = client(proxy).chat.completions.create(model="mock", messages=exec_message(code),
                                                       extra_headers=RLM_ON)
    answer = completion.choices[0].message.content or ""
    return base64.b64decode(answer.removeprefix(ECHO_PREFIX)).decode() if answer.startswith(ECHO_PREFIX) \
        else answer


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def written_since(proxy: Server) -> Callable[[], str]:
    """What the proxy has written to its stdout/stderr since the test began."""
    before = proxy.log_path.stat().st_size

    def read() -> str:
        with proxy.log_path.open("rb") as log:
            log.seek(before)
            return log.read().decode(errors="replace")

    return read


def test_a_worker_cannot_make_the_proxy_allocate(proxy: Server) -> None:
    run_code(proxy, "print(1)")  # warm-up: the first run's own allocations are not the point
    before = peak_rss_mb(proxy.process.pid)
    seen = run_code(proxy, "big = 'A' * 20_000_000\nanswers = llm_query_batched([big] * 24)\n"
                           "print(len(answers), answers[0])")
    assert "24 Error: this prompt has 20,000,000 characters, over the sub-model's limit" in seen
    nested = run_code(proxy, "print(rlm_query('Summarise.', ['B' * 20_000_000] * 8))")
    assert "Error: this nested run's prompt and context is 160,000,0" in nested
    assert "the proxy takes at most 33,554,432 bytes for one" in nested
    assert peak_rss_mb(proxy.process.pid) - before < 100


def test_worker_output_stays_out_of_the_proxy_log(proxy: Server, written_since: Callable[[], str]) -> None:
    flood = RAISING_GENERATORS.replace("'x' * 1000", "'x' * 250_000")  # 10 MB if it reached the log
    seen = run_code(proxy, flood + "import re\ntry:\n    re.compile('(a|b)*c' * 200, re.RegexFlag(128))\n"
                                   "except ValueError as error:\n    print(error)\n")
    assert "[An exception was ignored during cleanup: ValueError: xxx" in seen
    assert "re.DEBUG is not available in the sandbox" in seen
    crashed = run_code(proxy, "t = ()\nfor _ in range(1_000_000):\n    t = (t,)\nhash(t)")
    assert "crashed the Python interpreter (SIGSEGV) at <block 1>, line 4" in crashed
    written = written_since()
    assert len(written) < 64 * 1024
    assert "POST /admin" not in written and "Exception ignored" not in written
    assert all(line.startswith(("WARNING", "INFO", "sandbox worker")) or not line.strip()
               for line in written.splitlines()), written[:2000]


def test_formatting_and_super_reach_nothing(proxy: Server) -> None:
    attempts = {
        "userstring": "collections.UserString('{0.__class__.__base__.__subclasses__}').format(())",
        "userstring_map": "collections.UserString('{a.__class__.__base__}').format_map({'a': 1})",
        "formatter": "string.Formatter().format('{0.__globals__}', len)",
        "str_format": "'{0.__class__.__init__}'.format(1)",
        "super_init": "getattr(super(E, E), '__init__')(re, 're', {'findall': 1})",
    }
    code = "import collections, re, string\nclass E(type(re)):\n    pass\n"
    for name, attempt in attempts.items():
        code += (f"try:\n    print('ESCAPED', {name!r}, {attempt})\n"
                 "except (AttributeError, TypeError) as error:\n"
                 f"    print('blocked', {name!r}, repr(error))\n")
    code += "print('{0} and {x:>4} {0.__class__.__name__}'.format('plain', x=7), re.findall('a', 'banana'))\n"
    seen = run_code(proxy, code)
    assert "ESCAPED" not in seen
    assert all(f"blocked {name} AttributeError" in seen for name in attempts), seen
    assert "plain and    7 str ['a', 'a', 'a']" in seen


def test_crashes_become_notes_and_leave_nothing_half_dead(proxy: Server) -> None:
    assert "\ufffd" in run_code(proxy, "print(chr(0xd800))")
    for code in ["t = ()\nfor _ in range(1_000_000):\n    t = (t,)\nprint(hash(t))",
                 "it = iter([1])\nfor _ in range(1_000_000):\n    it = map(abs, it)\nprint(next(it))"]:
        seen = run_code(proxy, code)
        assert "the code crashed the Python interpreter (SIGSEGV)" in seen and "was lost" in seen
    too_long = run_code(proxy, "FINAL('A' * 120_000_000)")
    assert "FINAL: the answer has 120,000,000 characters, more than the 4,194,304" in too_long
    assert httpx.get(proxy.url + "/livez").status_code == 200
    time.sleep(0.5)
    assert child_pids(proxy.process.pid, zombies=True) == set()


def test_error_text_shows_no_host_paths(proxy: Server) -> None:
    path = f"{sys.prefix}/lib/secret.py"
    seen = run_code(proxy, "try:\n    'x'.encode('zlib_codec')\nexcept LookupError as error:\n"
                           f"    print(error)\nraise OSError(2, 'No such file', {path!r})")
    assert "unknown encoding: zlib_codec" in seen
    assert sys.prefix not in seen and "'<python>/lib/secret.py'" in seen


def test_readyz_reports_the_isolation_and_every_worker_is_filtered(proxy: Server) -> None:
    """The proxy's workers stand behind the seccomp filter (tests/test_sandbox_wall.py tests what it stops)
    and ordinary code still runs behind it."""
    seen = run_code(proxy, "import json, re\nprint(json.dumps(sorted(set(re.findall('[a-z]', 'filter')))))")
    assert '["e", "f", "i", "l", "r", "t"]' in seen
    assert httpx.get(proxy.url + "/readyz").json()["checks"]["sandbox"]["isolation"] == "seccomp"
    deadline = time.monotonic() + 30  # a worker replacing the one just used may still be starting

    def filtered(pid: int) -> bool:
        try:
            return "\nSeccomp:\t2\n" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:  # ended meanwhile
            return True

    while not all(filtered(pid) for pid in child_pids(proxy.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = child_pids(proxy.process.pid)
    assert workers and all(filtered(pid) for pid in workers)


def test_a_root_model_that_hangs_gets_a_504(start_proxy: StartProxy, tmp_path: Path) -> None:
    slow = start_server(["mock-upstream", "--latency-ms", "4000"], "/v1/models", tmp_path / "mock.log")
    try:
        server = start_proxy(rlm_config(Mock(slow), rlm={"timeout_s": 1, "final_answer_timeout_s": 1}))
        with pytest.raises(openai.InternalServerError) as raised:
            client(server).chat.completions.create(model="mock", messages=exec_message("print(1)"),
                                                   extra_headers=RLM_ON)
        assert raised.value.status_code == 504 and raised.value.code == "upstream_timeout"
        assert "final_answer_timeout_s" in raised.value.message
        stream = client(server).chat.completions.create(model="mock", messages=exec_message("print(1)"),
                                                        extra_headers=RLM_ON, stream=True)
        with pytest.raises(openai.APIError, match="did not give a final answer"):
            list(stream)
        assert "unhandled error" not in server.log() and "Traceback" not in server.log()
    finally:
        slow.stop()


def test_sandbox_workers_are_capped(mock_upstream: Mock, start_proxy: StartProxy) -> None:
    # Admission above the workers, so that runs reach the pool's own cap (by default admission would
    # queue the runs past max_workers before they ask for a worker).
    server = start_proxy(rlm_config(mock_upstream, sandbox={"workers": 1, "max_workers": 2,
                                                            "worker_wait_s": 0.5},
                                    admission={"max_concurrent_rlm_runs": 5}))
    most = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, len(child_pids(server.process.pid)))
            time.sleep(0.02)

    def one(_: int) -> int:
        try:
            run_code(server, "print(llm_query('[[mock:latency_ms=1500]] Hold the worker.'))")
        except openai.APIStatusError as error:
            assert error.code == "sandbox_unavailable" and error.response.headers["retry-after"]
            return error.status_code
        return 200

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            statuses = sorted(pool.map(one, range(5)))
    finally:
        done.set()
        watcher.join()
    assert statuses.count(200) >= 2 and 503 in statuses, statuses
    assert most <= 2
