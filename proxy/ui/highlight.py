"""Python syntax highlighting for the viewer: Pygments' lexer, answered as (class, text) pairs that the page
turns into text nodes, so that no model-written text is ever parsed as HTML."""

from __future__ import annotations

from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES, Comment, Keyword, Name, Number, Operator, String, _TokenType

# The kinds the stylesheet colours; any other token is plain text (class "").
STYLED = (Comment, Keyword, Name.Builtin, Name.Class, Name.Decorator, Name.Function, Number, Operator.Word,
          String)


def _styled(kind: _TokenType) -> str:
    while kind not in STYLED and kind.parent is not None:
        kind = kind.parent
    return STANDARD_TYPES[kind] if kind in STYLED else ""


def python_tokens(code: str) -> list[tuple[str, str]]:
    """`code` as runs of (CSS class, text) whose texts join to `code` (its line ends made \\n by Pygments)."""
    runs: list[tuple[str, str]] = []
    # No stripping or added newline: the texts must give back the code as it was.
    for kind, text in PythonLexer(stripnl=False, ensurenl=False).get_tokens(code):
        style = _styled(kind)
        if runs and runs[-1][0] == style:
            runs[-1] = (style, runs[-1][1] + text)
        else:
            runs.append((style, text))
    return runs
