"""How much of `context` the code has read: a str subclass that records what its methods touch.

Reads are recorded cheaply (one interval per operation) and merged lazily. Slicing and indexing record
exactly what they return; searches record the stretch they scanned; methods that copy or split the whole
string, iteration, `str()`/`repr()` and passing the string to a text module (`re`, `json`, ...) record
everything. The figure need not be exact: it tells the model whether it has looked at the whole input.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any, SupportsIndex

READ_MAP_CELLS = 100
COMPACT_EVERY = 4096  # pending intervals are merged once there are this many, and as many as merged ones

# Methods whose result depends on (or copies) the whole string.
WHOLE_STRING_METHODS = (
    "split", "rsplit", "splitlines", "strip", "lstrip", "rstrip", "lower", "upper", "casefold", "title",
    "capitalize", "swapcase", "replace", "partition", "rpartition", "encode", "expandtabs", "translate",
    "center", "ljust", "rjust", "zfill", "removeprefix", "removesuffix", "join", "isalnum", "isalpha",
    "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable", "isspace",
    "istitle", "isupper", "__iter__", "__add__", "__mul__", "__rmul__", "__mod__", "__str__",
    "__repr__", "__format__",
)


class Coverage:
    """A union of half-open character intervals over a context of `total` characters."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._merged: list[tuple[int, int]] = []
        self._pending: list[tuple[int, int]] = []
        self._owners: dict[int, tuple[object, int, int]] = {}  # id -> (object kept alive, start, end)

    def mark(self, start: int, end: int) -> None:
        if end > start:
            self._pending.append((start, end))
            if len(self._pending) >= max(COMPACT_EVERY, len(self._merged)):  # amortised: scattered reads
                self._compact()

    def add_owner(self, owner: object, start: int, end: int) -> None:
        """Passing `owner` (the context list or one of its messages) to a text function reads [start, end)."""
        self._owners[id(owner)] = (owner, start, end)

    def note(self, value: object) -> None:
        """`value` was handed to a function that reads text in C (re, json, ...)."""
        if isinstance(value, TrackedStr):
            value._mark_all_read()
        elif (owned := self._owners.get(id(value))) is not None and owned[0] is value:
            self.mark(owned[1], owned[2])

    def intervals(self) -> list[tuple[int, int]]:
        self._compact()
        return list(self._merged)

    def fraction(self) -> float:
        if self.total == 0:
            return 1.0
        self._compact()
        return min(1.0, sum(end - start for start, end in self._merged) / self.total)

    def _compact(self) -> None:
        if not self._pending:
            return
        merged: list[tuple[int, int]] = []
        for start, end in sorted(self._merged + self._pending):
            if merged and start <= merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        self._merged, self._pending = merged, []


def _recording_whole_reads(cls: type[TrackedStr]) -> type[TrackedStr]:
    """Adds the WHOLE_STRING_METHODS: each records the whole string as read, then runs str's method."""
    for name in WHOLE_STRING_METHODS:
        setattr(cls, name, _reads_all(getattr(str, name)))
    cls.__name__ = "str"  # what error messages call it ("'str' object has no attribute ...")
    return cls


def _reads_all(base: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: TrackedStr, *args: Any, **kwargs: Any) -> Any:
        self._mark_all_read()
        return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = base.__name__
    return method


@_recording_whole_reads
class TrackedStr(str):
    """The context (or one message's content): a real str that records which parts the code reads.

    The recording state lives in underscore attributes, which sandboxed code cannot name, and the sandbox's
    `type()` reports this class as `str`, so code never gets hold of the class either.
    """

    _coverage: Coverage
    _offset: int

    def __new__(cls, text: str, coverage: Coverage, offset: int) -> TrackedStr:
        self = super().__new__(cls, text)
        self._coverage = coverage
        self._offset = offset
        return self

    def __copy__(self) -> TrackedStr:
        return self  # immutable, as copy treats str: copy.copy / deepcopy of the context give the context

    def __deepcopy__(self, memo: dict[int, object]) -> TrackedStr:
        return self

    def _mark_read(self, start: int, end: int) -> None:
        self._coverage.mark(self._offset + max(0, start), self._offset + min(end, len(self)))

    def _mark_all_read(self) -> None:
        self._coverage.mark(self._offset, self._offset + len(self))

    def _bounds(self, start: SupportsIndex | None, end: SupportsIndex | None) -> tuple[int, int]:
        first, last, _ = slice(start, end).indices(len(self))
        return first, max(first, last)

    def __getitem__(self, key: SupportsIndex | slice) -> str:  # type: ignore[override]
        value = str.__getitem__(self, key)
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step > 0:
                self._mark_read(start, stop)
            else:
                self._mark_read(stop + 1, start + 1)
        else:
            index = operator.index(key)
            index += len(self) if index < 0 else 0
            self._mark_read(index, index + 1)
        return value

    def __contains__(self, sub: object) -> bool:  # type: ignore[override]
        if not isinstance(sub, str):
            return str.__contains__(self, sub)  # type: ignore[operator]  # raises the usual TypeError
        return self.find(sub) >= 0

    def find(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        found = str.find(self, sub, start, end)
        first, last = self._bounds(start, end)
        self._mark_read(first, found + len(sub) if found >= 0 else last)
        return found

    def rfind(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        found = str.rfind(self, sub, start, end)
        first, last = self._bounds(start, end)
        self._mark_read(found if found >= 0 else first, last)
        return found

    def index(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        found = self.find(sub, start, end)
        if found < 0:
            raise ValueError("substring not found")
        return found

    def rindex(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        found = self.rfind(sub, start, end)
        if found < 0:
            raise ValueError("substring not found")
        return found

    def count(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        counted = str.count(self, sub, start, end)
        self._mark_read(*self._bounds(start, end))
        return counted

    def startswith(self, prefix: str | tuple[str, ...], start: SupportsIndex | None = None,
                   end: SupportsIndex | None = None) -> bool:
        answer = str.startswith(self, prefix, start, end)
        first, last = self._bounds(start, end)
        self._mark_read(first, min(last, first + _longest(prefix)))
        return answer

    def endswith(self, suffix: str | tuple[str, ...], start: SupportsIndex | None = None,
                 end: SupportsIndex | None = None) -> bool:
        answer = str.endswith(self, suffix, start, end)
        first, last = self._bounds(start, end)
        self._mark_read(max(first, last - _longest(suffix)), last)
        return answer

    def __radd__(self, other: str) -> str:  # str has none; defining one catches `"prefix" + context`
        self._mark_all_read()
        return other + str.__str__(self)

    def __reversed__(self) -> Iterator[str]:
        self._mark_all_read()
        return reversed(str.__str__(self))


def _longest(affixes: str | tuple[str, ...]) -> int:
    return len(affixes) if isinstance(affixes, str) else max(map(len, affixes), default=0)


def tracked_chars(context: str | list[Any]) -> int:
    """The characters of `context` that coverage is counted over: a str's, or its messages' str contents'."""
    if isinstance(context, str):
        return len(context)
    return sum(len(content) for message in context
               if isinstance(message, dict) and isinstance(content := message.get("content"), str))


def read_map(intervals: list[tuple[int, int]], total: int, cells: int = READ_MAP_CELLS) -> tuple[int, ...]:
    """Which parts of a context of `total` characters the intervals cover: the context cut into `cells`
    equal parts (fewer for a shorter one), the percent of each part read."""
    if total <= 0:
        return ()
    cells = min(cells, total)
    read = [0] * cells
    for start, end in intervals:
        for cell in range(start * cells // total, (min(end, total) - 1) * cells // total + 1):
            low, high = cell * total // cells, (cell + 1) * total // cells
            read[cell] += max(0, min(end, high) - max(start, low))
    return tuple(round(100 * got / ((cell + 1) * total // cells - cell * total // cells))
                 for cell, got in enumerate(read))


def track_context(context: str | list[Any]) -> tuple[Any, Coverage]:
    """The context with its text wrapped in TrackedStr, and the Coverage recording reads of it.

    A list context is a list of messages; each message's str `content` is tracked at its own offset in
    one character space, so coverage is the share of all message text read.
    """
    if isinstance(context, str):
        coverage = Coverage(len(context))
        return TrackedStr(context, coverage, 0), coverage
    contents = [message.get("content") if isinstance(message, dict) else None for message in context]
    coverage = Coverage(tracked_chars(context))
    offset = 0
    for message, content in zip(context, contents, strict=True):
        if isinstance(content, str):
            message["content"] = TrackedStr(content, coverage, offset)
            coverage.add_owner(message, offset, offset + len(content))
            offset += len(content)
    coverage.add_owner(context, 0, offset)
    return context, coverage
