"""Real model-written REPL code (the corpus described in ../shared/realcode/SOURCES.md, read at run time,
never copied here): every block that runs cleanly in plain CPython runs identically in the sandbox, or is
refused for a reason the sandbox must keep (files, network, processes, threads, event loops) with a message
saying what to do instead. `python -m bench.realcode` prints the same comparison as figures."""

from __future__ import annotations

import io

import pytest

from bench.realcode import (
    CORPUS_FILE,
    CORPUS_VARIABLE,
    compare,
    corpus_dir,
    counted,
    load_trajectories,
    report,
)

# With the synthetic context, this many distinct blocks of the corpus run cleanly in CPython (306 when
# measured): fewer means the comparison itself broke (a context or stub that makes everything fail).
MIN_CLEAN_BLOCKS = 290


@pytest.mark.skipif(not (corpus_dir() / CORPUS_FILE).is_file(),
                    reason=f"the real-code corpus is absent: no {CORPUS_FILE} in {corpus_dir()} (set "
                           f"{CORPUS_VARIABLE} to the folder holding it)")
def test_every_block_clean_in_cpython_runs_identically_in_the_sandbox() -> None:
    comparisons = compare(load_trajectories(corpus_dir()))
    clean = [compared for compared in counted(comparisons) if compared.clean]
    figures = io.StringIO()
    report(comparisons, show=20, write=lambda line: print(line, file=figures))
    assert len(clean) >= MIN_CLEAN_BLOCKS, figures.getvalue()
    assert all(compared.identical or compared.refused for compared in clean), figures.getvalue()
