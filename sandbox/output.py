"""A block's printed output, capped while it is collected: an output bomb costs counting, not memory."""

from __future__ import annotations

from typing import Any

from sandbox.coverage import TrackedStr


class Output:
    """Sandboxed `print` for every scope: RestrictedPython calls `_print_(_getattr_)` at the top of each
    function that prints and then `_print._call_print(...)`; returning this one collector (instead of a
    collector per function) keeps prints made inside functions, and across blocks for generators.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._parts: list[str] = []
        self._kept = 0  # characters in _parts, at most max_chars
        self.total = 0  # characters printed, including what was not kept

    def reset(self) -> None:
        self._parts, self._kept, self.total = [], 0, 0

    def text(self) -> str:
        return "".join(self._parts)

    def collector(self, _getattr: object = None) -> Output:
        """What `_print_` returns."""
        return self

    def __call__(self) -> str:
        """The `printed` variable of RestrictedPython: the output so far."""
        return self.text()

    def _call_print(self, *objects: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None,
                    flush: bool = False) -> None:
        if not isinstance(sep, (str, type(None))) or not isinstance(end, (str, type(None))):
            raise TypeError("sep and end must be None or a str")
        sep = " " if sep is None else sep
        end = "\n" if end is None else end
        if file is not None and not isinstance(file, Stream):  # e.g. an io.StringIO: print as CPython does
            file.write(sep.join(map(str, objects)) + end)
            return
        for index, obj in enumerate(objects):
            if index:
                self.write(sep)
            if isinstance(obj, TrackedStr):
                self._write_tracked(obj)
            else:
                self.write(obj if type(obj) is str else str(obj))
        self.write(end)

    def write(self, text: str) -> None:
        self.total += len(text)
        room = self.max_chars - self._kept
        if room > 0:
            kept = text if len(text) <= room else text[:room]
            self._parts.append(kept)
            self._kept += len(kept)

    def _write_tracked(self, text: TrackedStr) -> None:
        """Only what fits is copied, and only that counts as read."""
        shown = max(0, min(len(text), self.max_chars - self._kept))
        text._mark_read(0, shown)
        self.total += len(text) - shown
        self.write(str.__getitem__(text, slice(0, shown)))


class Stream:
    """sys.stdout and sys.stderr as sandboxed code sees them: both write into the block's output, which is
    everything the model is shown."""

    encoding = "utf-8"

    def __init__(self, output: Output) -> None:
        self._output = output

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._output.write(str.__str__(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing to flush: the output is collected as it is written."""

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True
