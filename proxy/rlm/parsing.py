"""Reading the root model's replies: which code to run, and whether (and how) it answered."""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_FINAL_VAR_LINE = re.compile(r"^[ \t>*_`]*FINAL_VAR\(\s*['\"]?([A-Za-z][A-Za-z0-9_]*)['\"]?\s*\)[ \t*_`.]*$",
                             re.MULTILINE)
_FINAL_LINE_START = re.compile(r"^[ \t>*_`]*FINAL\(", re.MULTILINE)
_INLINE_FINAL = re.compile(r"\bFINAL(?:_VAR)?\(")
_QUOTES = ('"', "'", "`")


@dataclass(frozen=True)
class ParsedReply:
    code_blocks: list[str]  # ```repl blocks, in order
    other_code_languages: list[str]  # fenced blocks that will not run (```python etc.)
    final_answer: str | None  # FINAL(...) on its own line, outside code
    final_variable: str | None  # FINAL_VAR(name) on its own line, outside code
    inline_final: bool  # FINAL( appears in prose, not on its own line: not an answer

    @property
    def answered(self) -> bool:
        return self.final_answer is not None or self.final_variable is not None


def parse_reply(text: str) -> ParsedReply:
    code_blocks: list[str] = []
    other_languages: list[str] = []
    for match in _FENCE.finditer(text):
        language = match.group(1).lower()
        if language == "repl":
            code_blocks.append(match.group(2))
        elif language in ("python", "py", "python3", ""):
            other_languages.append(language or "unlabelled")
    prose = _FENCE.sub("", text)
    variable = _FINAL_VAR_LINE.search(prose)
    answer = _final_answer(prose)
    inline = answer is None and variable is None and _INLINE_FINAL.search(prose) is not None
    return ParsedReply(code_blocks, other_languages, answer, variable.group(1) if variable else None, inline)


class BlockWatcher:
    """Finds the ```repl blocks of a reply as it streams in, each as soon as its closing fence arrives.
    A fence matched in a prefix of the reply is matched the same in the whole reply (the match is
    non-greedy and scanned from the left), so the blocks found are always the first of `parse_reply`'s."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._joined = ""
        self._scanned = 0  # where the next fence may start

    def feed(self, delta: str) -> list[str]:
        """The blocks that `delta` completed, in order."""
        self._text.append(delta)
        if "`" not in delta:
            return []  # only a closing fence completes a block
        self._joined += "".join(self._text)
        self._text.clear()
        blocks = []
        while (match := _FENCE.search(self._joined, self._scanned)) is not None:
            self._scanned = match.end()
            if match.group(1).lower() == "repl":
                blocks.append(match.group(2))
        return blocks


def _final_answer(prose: str) -> str | None:
    """FINAL( at the start of a line, up to its matching parenthesis, so that answers holding parentheses
    or several lines come through whole; unbalanced, it runs to the last closing parenthesis."""
    start = _FINAL_LINE_START.search(prose)
    if start is None:
        return None
    rest = prose[start.end():]
    depth = 1
    for index, char in enumerate(rest):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            return strip_quotes(rest[:index].strip())
    end = rest.rfind(")")
    return strip_quotes(rest[:end].strip()) if end >= 0 else None


def strip_quotes(answer: str) -> str:
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in _QUOTES:
        return answer[1:-1].strip()
    return answer


def answer_without_protocol(text: str) -> str:
    """A final reply that ignored the protocol: its prose is the best answer there is."""
    return _FENCE.sub("", text).strip()
