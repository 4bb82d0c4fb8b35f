"""The module views sandboxed code imports: a crawl of everything reachable from them through the guarded
getattr (every name dir() lists, dunders included, a few levels deep) finds no module, frame, traceback
or code object, no namespace dict of a module, no host function that reaches past the guards, and no
object on which the guard lets code read __globals__, __builtins__, __subclasses__ and the like. Pure
policy, in this process: the same Guards a worker builds."""

from __future__ import annotations

import builtins
import importlib
import io
import os
import sys
from collections.abc import Iterator
from types import CodeType, FrameType, ModuleType, TracebackType
from typing import Any

import pytest

from sandbox.coverage import read_map, track_context, tracked_chars
from sandbox.interface import ALLOWED_MODULES
from sandbox.output import Output
from sandbox.policy import Guards, is_plain_attribute_name

DEPTH = 3
NEVER_READABLE = ("__globals__", "__builtins__", "__subclasses__", "__code__", "__closure__", "__self__",
                  "__func__", "__base__", "__bases__", "__mro__", "mro", "__traceback__", "__reduce_ex__",
                  "__getattribute__", "__init_subclass__", "__dict__", "f_globals", "gi_frame", "tb_frame")
# Host functions that would reach past the guards if code could call them.
DANGEROUS = (builtins.open, builtins.eval, builtins.exec, builtins.compile, builtins.__import__,
             builtins.getattr, builtins.setattr, builtins.delattr, builtins.vars, builtins.globals,
             builtins.locals, builtins.type, builtins.dir, io.open, io.FileIO, os.system, os.open,
             importlib.import_module, sys._getframe, sys.exc_info, sys.setrecursionlimit)
OPAQUE = (ModuleType, FrameType, TracebackType, CodeType)
LEAF_TYPES = (str, bytes, int, float, complex, bool, type(None))


@pytest.fixture(scope="module")
def guards() -> Guards:
    _, coverage = track_context("the context")
    return Guards(coverage, Output(1000), describe=lambda error: type(error).__name__, sleep=lambda s: None)


def reachable(guards: Guards, start: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) for everything the guarded getattr reaches from `start`, breadth first."""
    seen: dict[int, Any] = {}  # holding each value keeps its id from being reused
    frontier = [(path, start, 0)]
    while frontier:
        path, value, depth = frontier.pop(0)
        if id(value) in seen:
            continue
        seen[id(value)] = value
        yield path, value
        if depth == DEPTH or isinstance(value, LEAF_TYPES):
            continue
        try:
            names = dir(value)
        except Exception:  # a value whose dir() fails offers nothing to crawl
            continue
        for name in names:
            try:
                found = guards.getattr(value, name)
            except Exception:  # refused or failing: not reachable
                continue
            frontier.append((f"{path}.{name}", found, depth + 1))


def module_namespaces() -> list[dict[str, Any]]:
    return [vars(module) for module in list(sys.modules.values()) if module is not None]


@pytest.mark.parametrize("module", ALLOWED_MODULES)
def test_nothing_reachable_from_a_module_view_leads_out(guards: Guards, module: str) -> None:
    namespaces = [*module_namespaces(), sys.modules, guards.builtins]
    crawled = 0
    for path, value in reachable(guards, guards.modules[module], module):
        crawled += 1
        assert not isinstance(value, OPAQUE), path
        assert not any(value is namespace for namespace in namespaces), path
        assert not any(value is function for function in DANGEROUS), path
        assert getattr(value, "__name__", None) != "__subclasses__", path
        for name in NEVER_READABLE:
            with pytest.raises((AttributeError, TypeError)):
                guards.getattr(value, name)
        if isinstance(value, type):  # class patterns read these names with the interpreter's getattr
            assert all(is_plain_attribute_name(name) for name in getattr(value, "__match_args__", ())), path
    assert crawled > 1


def test_the_crawl_finds_what_a_raw_getattr_would_leak(guards: Guards) -> None:
    """The crawl itself is able to see a leak: without the guard, a module function leads to its module."""
    import json

    assert isinstance(json.loads.__globals__["codecs"], ModuleType)
    assert any(isinstance(value, OPAQUE) for _, value in reachable(_RawGuards(), json.loads, "loads"))


class _RawGuards:
    """A stand-in with an unguarded getattr (only for the test above)."""

    @staticmethod
    def getattr(obj: object, name: str) -> Any:
        return getattr(obj, name)


def test_the_read_map_says_which_hundredths_of_the_context_were_read() -> None:
    assert read_map([(0, 500)], 1000) == (100,) * 50 + (0,) * 50
    assert read_map([(0, 5), (995, 1000)], 1000)[::99] == (50, 50)  # half of the first and last cells
    assert read_map([(10, 20)], 40) == (0,) * 10 + (100,) * 10 + (0,) * 20  # shorter than 100: a cell each
    assert read_map([], 0) == ()
    assert read_map([(0, 3)], 1000)[0] == 30


def test_coverage_counts_a_list_contexts_message_texts() -> None:
    context = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": None},
               {"role": "user", "content": "de"}]
    assert tracked_chars(context) == 5 == track_context(context)[1].total
    assert tracked_chars("hello") == 5
