"""The Python that models write (issue 11), run in plain CPython and in the sandbox: each idiom must run
cleanly in both and print the same thing. Real worker processes, through bench/realcode.py's comparison
(the CPython side in a fresh process per idiom). Then what differs by design (traceback text, copies of
the namespace) and what is refused, with the advice the refusal gives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from bench.realcode import Block, Comparison, StubHandler, compare
from sandbox import ExecResult, PoolLimits, SandboxLimits, SandboxPool, SandboxSession
from sandbox.policy import REFUSALS

IDIOMS: dict[str, str] = {
    "str_format_prompt_template": '''
TEMPLATE = """Summarise this chunk ({index} of {total}):
{chunk}
Answer in {limit:>4} words, score {score:.2f}, first {items[0]} last {items[1]!r}."""
chunks = [context[i:i + 40] for i in range(0, 120, 40)]
prompts = [TEMPLATE.format(index=i + 1, total=len(chunks), chunk=chunk, limit=50, score=i / 3,
                           items=["a", "b"]) for i, chunk in enumerate(chunks)]
print(prompts[1])
print("{0} and {1}; {name}".format("x", "y", name="z"), "{a}-{b}".format_map({"a": 1, "b": 2}))
class Doc:
    def __init__(self, title):
        self.title = title
print("{0.title} / {d.title}".format(Doc("one"), d=Doc("two")), "{:,}".format(1234567))
answers = llm_query_batched(prompts)
print(len(answers), answers[0].startswith("stub answer"))
''',
    "hasattr_and_getattr_with_defaults": '''
print(hasattr(context, "__len__"), hasattr(context, "split"), hasattr(5, "__iter__"), hasattr([], "__iter__"))
print(getattr(context, "missing", "default"), getattr(len, "__name__", None),
      getattr([], "append") is not None)
print(callable(getattr(context, "upper")), hasattr(print, "__call__"), getattr(3, "real"))
''',
    "type_and_class_names": '''
try:
    {}["missing"]
except Exception as e:
    print(type(e).__name__, e.__class__.__name__, e.__class__.__qualname__, type(e).__module__)
class Mine:
    """Documented."""
print(type(Mine()).__name__, Mine().__class__.__name__, Mine.__doc__, Mine.__module__)
print(type(context).__name__, context.__class__ is str, (1).__class__.__name__, len.__name__)
''',
    "dunder_methods_in_own_classes": '''
class Box:
    def __init__(self, *items):
        self.items = list(items)
    def __repr__(self):
        return f"Box({self.items!r})"
    def __str__(self):
        return "box of " + str(len(self))
    def __len__(self):
        return len(self.items)
    def __iter__(self):
        return iter(self.items)
    def __getitem__(self, index):
        return self.items[index]
    def __contains__(self, item):
        return item in self.items
    def __eq__(self, other):
        return isinstance(other, Box) and self.items == other.items
    def __hash__(self):
        return hash(tuple(self.items))
    def __lt__(self, other):
        return len(self) < len(other)
    def __add__(self, other):
        return Box(*self.items, *other.items)
    def __bool__(self):
        return bool(self.items)
    def __call__(self, x):
        return x in self
class Labelled(Box):
    def __repr__(self):
        return "Labelled:" + super().__repr__()
class Timer:
    def __enter__(self):
        print("enter")
        return self
    def __exit__(self, kind, error, tb):
        print("exit", kind.__name__ if kind else None)
        return True
b = Box(1, 2)
print(repr(b), str(b), len(b), list(b), b[0], 2 in b, b == Box(1, 2), len({b, Box(1, 2)}))
print(sorted([Box(1, 2, 3), b]), b + Box(3), bool(Box()), b(1), Labelled(5))
with Timer():
    raise ValueError("swallowed by __exit__")
print(f"{b!r} {b}")
''',
    "nonlocal_closures": '''
def counter():
    count = 0
    def bump(by=1):
        nonlocal count
        count += by
        return count
    return bump
bump = counter()
bump(); bump(5)
print(bump())
''',
    "match_statements": '''
from dataclasses import dataclass
@dataclass
class Point:
    x: int
    y: int
def describe(value):
    match value:
        case 0 | 1:
            return "bit"
        case int(n) if n < 0:
            return f"negative {n}"
        case str() as text:
            return f"text {text!r}"
        case [first, *rest]:
            return f"list from {first} with {len(rest)} more"
        case {"role": role, **others}:
            return f"message by {role} ({sorted(others)})"
        case Point(0, y):
            return f"on the y axis at {y}"
        case Point(x=x, y=0):
            return f"on the x axis at {x}"
        case None:
            return "nothing"
        case _:
            return "other"
for value in (1, -4, "hi", [1, 2, 3], {"role": "user", "content": "x"}, Point(0, 3), Point(2, 0), None, 2.5):
    print(describe(value))
''',
    "dataclasses": '''
import dataclasses
from dataclasses import dataclass, field, asdict, astuple, replace
@dataclass(order=True)
class Chunk:
    start: int
    end: int = 0
    tags: list = field(default_factory=list)
    def __post_init__(self):
        self.end = max(self.end, self.start)
    @property
    def size(self):
        return self.end - self.start
@dataclass(frozen=True)
class Key:
    name: str
c = Chunk(3, 10, ["a"])
print(c, c.size, asdict(c), astuple(c), replace(c, end=20), sorted([Chunk(5), Chunk(1)]))
print([f.name for f in dataclasses.fields(Chunk)], dataclasses.is_dataclass(c), Chunk(7) == Chunk(7, 7))
try:
    Key("k").name = "other"
except dataclasses.FrozenInstanceError as error:
    print("frozen:", type(error).__name__)
''',
    "typing": '''
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, TypedDict, TypeVar, Generic, Union, cast
import typing
class Span(NamedTuple):
    start: int
    end: int = 0
class Movie(TypedDict):
    title: str
T = TypeVar("T")
class Stack(Generic[T]):
    def __init__(self):
        self.items: List[T] = []
    def push(self, item: T) -> None:
        self.items.append(item)
def first(values: List[int], default: Optional[int] = None) -> Union[int, None]:
    return values[0] if values else default
s = Stack()
s.push(1)
print(Span(1), Span(2, 5).end, Movie(title="x"), s.items, first([]), first([4]))
print(cast(int, "x"), typing.get_origin(List[int]) is list, typing.get_args(Dict[str, int]),
      Any is typing.Any)
''',
    "enum": '''
import enum
from enum import Enum, IntEnum, auto
class Color(Enum):
    RED = auto()
    GREEN = auto()
class Level(IntEnum):
    LOW = 1
    HIGH = 2
Shape = Enum("Shape", "CIRCLE SQUARE")
print(Color.RED, Color(2), Color["GREEN"].name, [c.name for c in Color], Level.HIGH > Level.LOW)
print(Shape.SQUARE.value, len(Shape), isinstance(Color.RED, Enum), enum.unique(Color) is Color,
      Shape.__module__, Color.__module__)
''',
    "operator_and_copy": '''
import copy, operator
from functools import reduce
rows = [{"name": "b", "n": 2}, {"name": "a", "n": 1}]
print(sorted(rows, key=operator.itemgetter("name")), reduce(operator.add, [1, 2, 3]), operator.mul(3, 4))
class P:
    def __init__(self, name):
        self.name = name
    def shout(self, suffix):
        return self.name.upper() + suffix
people = [P("bo"), P("al")]
print([p.name for p in sorted(people, key=operator.attrgetter("name"))],
      operator.methodcaller("shout", "!")(people[0]))
print(operator.itemgetter(0, 2)("abc"), operator.attrgetter("real", "imag")(3 + 4j))
nested = {"a": [1, {"b": 2}]}
deep, shallow = copy.deepcopy(nested), copy.copy(nested)
deep["a"][1]["b"] = 3
print(nested, deep, shallow["a"] is nested["a"], copy.copy(people[0]).name)
print(copy.deepcopy(context) == context, copy.copy(context) is context, copy.deepcopy([context])[0][:10])
''',
    "csv_with_io": '''
import csv, io, sys
data = "name,score\\nann,3\\nbob,5\\n"
rows = list(csv.DictReader(io.StringIO(data)))
print(rows, sum(int(row["score"]) for row in rows))
out = io.StringIO()
writer = csv.writer(out)
writer.writerow(["a", "b,c"])
print(repr(out.getvalue()))
csv.writer(sys.stdout).writerow([1, 2])
print(io.BytesIO(b"abc").read(2))
''',
    "time_hashlib_base64_string": '''
import time, hashlib, base64, string
start = time.perf_counter()
time.sleep(0.01)
print(time.perf_counter() - start >= 0.005, type(time.time()).__name__, time.strftime("%Y", time.gmtime(0)))
print(hashlib.md5(b"abc").hexdigest(), hashlib.sha256("é".encode()).hexdigest()[:12])
print(sorted(len(hashlib.new(name).hexdigest() if "shake" not in name else "x") for name in
             hashlib.algorithms_guaranteed))
print(base64.b64encode(b"hello"), base64.b64decode("aGVsbG8=").decode(), base64.urlsafe_b64encode(b"\\xff"))
print(string.capwords("a b"), string.ascii_lowercase[:3], string.punctuation[:3])
''',
    "sys_and_main": '''
import sys
print("to stderr", file=sys.stderr)
sys.stdout.write("written\\n")
print(sys.version_info >= (3, 8), sys.maxsize > 2**31, isinstance(sys.argv, list), type(sys.version).__name__)
if __name__ == "__main__":
    print("run as a script")
def f():
    return __name__
print(f())
''',
    "namespace_functions": '''
total = 3
def inner(a, b=2):
    c = a + b
    return sorted(locals().items())
print(inner(1), "total" in globals(), globals()["total"])
class Record:
    def __init__(self):
        self.a, self.b = 1, 2
print(vars(Record()), Record().__dict__, sorted(dir(Record()))[-2:], "inner" in dir())
''',
}


def idiom_block(name: str, code: str) -> Block:
    return Block(id=name, source="idioms", model="", code=code.strip("\n"), trajectory=name, seq=0,
                 preamble="", context_kind="str", counted=True)


@pytest.fixture(scope="module")
def comparisons() -> dict[str, Comparison]:
    return {compared.block.id: compared
            for compared in compare([[idiom_block(name, code)] for name, code in IDIOMS.items()])}


@pytest.mark.parametrize("name", IDIOMS)
def test_idiom_runs_as_in_cpython(comparisons: dict[str, Comparison], name: str) -> None:
    compared = comparisons[name]
    assert compared.cpython.outcome == "ok", compared.cpython  # the idiom itself is valid Python
    assert compared.sandbox.outcome == "ok", compared.sandbox
    assert compared.identical, (compared.cpython.stdout, compared.sandbox.stdout)


# What differs from CPython by design, and what is refused


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    pool = SandboxPool(SandboxLimits(cpu_s_per_block=2), PoolLimits(warm_workers=1))
    await pool.start()
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def session(pool: SandboxPool) -> AsyncIterator[SandboxSession]:
    session = await pool.session("the context")
    yield session
    await session.close()


async def run(session: SandboxSession, code: str) -> ExecResult:
    return await session.execute(code, StubHandler())


@pytest.mark.asyncio(loop_scope="module")
async def test_traceback_format_exc_shows_the_blocks_frames_only(session: SandboxSession) -> None:
    result = await run(session, "import traceback, json\ndef parse(text):\n    return json.loads(text)\n"
                                "try:\n    parse('{')\nexcept ValueError as error:\n"
                                "    print(traceback.format_exc())\n    traceback.print_exc()\n"
                                "    print(traceback.format_exception_only(error))")
    assert result.outcome == "ok", result.output
    last = "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    expected = ('Traceback (most recent call last):\n  File "<block 1>", line 5\n    parse(\'{\')\n'
                f'  File "<block 1>", line 3, in parse\n    return json.loads(text)\n{last}\n')
    assert result.output == expected + "\n" + expected + repr([last + "\n"]) + "\n"


@pytest.mark.asyncio(loop_scope="module")
async def test_globals_locals_vars_and_dir_are_copies_without_internals(session: SandboxSession) -> None:
    result = await run(session, "kept = 1\ng = globals()\ng['added'] = 2\n"
                                "def f(x):\n    print('p')\n    return sorted(locals()), dir()\n"
                                "print(sorted(globals()), 'added' in globals(), f(1),\n"
                                "      dir() == sorted(vars()))")
    assert result.outcome == "ok", result.output
    assert result.output == "p\n['context', 'f', 'g', 'kept'] False (['x'], ['x']) True\n"


@pytest.mark.asyncio(loop_scope="module")
async def test_sleep_is_bounded_by_the_blocks_cpu_allowance(session: SandboxSession) -> None:
    result = await run(session, "import time\ntime.sleep(1.5)\ntime.sleep(1)")
    assert result.outcome == "error"
    expected = "ValueError: time.sleep: a block may sleep 2 s in total in the sandbox (1.5 s used)"
    assert expected in result.output
    assert (await run(session, "import time\ntime.sleep(1.5)\nprint('slept')")).output == "slept\n"


@pytest.mark.asyncio(loop_scope="module")
async def test_sys_exit_ends_the_block_as_it_ends_a_script(session: SandboxSession) -> None:
    result = await run(session, "import sys\nprint('before')\nsys.exit(3)\nprint('after')")
    assert result.outcome == "error"
    assert result.output.startswith("before\n") and "SystemExit: 3" in result.output


REFUSED: dict[str, tuple[str, str]] = {
    "open": ("open('notes.txt', 'w')", "files"),
    "os": ("import os", "files"),
    "pathlib": ("from pathlib import Path", "files"),
    "subprocess": ("import subprocess", "processes"),
    "multiprocessing": ("from multiprocessing import Pool", "processes"),
    "socket": ("import socket", "network"),
    "urllib": ("import urllib.request", "network"),
    "requests": ("import requests", "network"),
    "threading": ("import threading", "threads"),
    "concurrent_futures": ("from concurrent.futures import ThreadPoolExecutor", "threads"),
    "asyncio": ("import asyncio", "event loops"),
}


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", REFUSED)
async def test_refusals_say_what_to_do_instead(session: SandboxSession, case: str) -> None:
    code, category = REFUSED[case]
    result = await run(session, code)
    assert result.outcome == "error"
    assert REFUSALS[category] in result.output, result.output
    advice: dict[str, Any] = {"files": "io.StringIO", "network": "llm_query", "processes": "directly",
                              "threads": "llm_query_batched", "event loops": "llm_query_batched"}
    assert advice[category] in REFUSALS[category]
