"""Runs the official `rlms` library (PyPI `rlms`, import name `rlm`) on tasks, for bench.peers.

Executed by the interpreter of the virtualenv that bench.peers makes for the library, so it imports only
`rlm` and the standard library. Reads one JSON task per stdin line ({"prompt_file", "question"}) and writes
one JSON line per task: the answer, the seconds `completion()` took, and the process's peak RSS so far.

    python bench/peers_rlms.py BASE_URL MODEL SUBCALL_CONCURRENCY
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from rlm import RLM  # type: ignore[import-not-found]


def main() -> int:
    base_url, model, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for line in sys.stdin:
        task = json.loads(line)
        prompt = Path(task["prompt_file"]).read_text()
        # A fresh RLM per task, as an application would make per request; the library runs its REPL
        # in process ("local"), its default.
        backend = {"model_name": model, "base_url": base_url, "api_key": "x"}
        rlm = RLM(backend="openai", backend_kwargs=backend, environment="local", max_iterations=30,
                  max_concurrent_subcalls=concurrency)
        began = time.perf_counter()
        try:
            answer = rlm.completion(prompt, root_prompt=task["question"]).response
        except Exception as error:  # reported as a failed task, the run goes on
            answer = f"error: {type(error).__name__}: {error}"
        wall = time.perf_counter() - began
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"answer": answer, "wall_s": wall, "peak_mb": peak_mb}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
