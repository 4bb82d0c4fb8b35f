"""What sandboxed code may do: restricted compilation, the runtime guards, the builtins and the modules.

RestrictedPython rewrites every attribute access, subscript, iteration, write and in-place operation of a
block into calls of the guard functions below; names starting with "_" are compile errors. The guards
only see what the restricted source itself does, so anything host code does on the sandbox's behalf
(getattr with a computed name, str.format's field lookups, module objects behind functions) is closed
here: computed attribute names pass the same checks as written ones, every way to str.format's field
lookups ("{0.attr[key]}") goes through one formatter that applies the same checks, and modules are
replaced by views holding only their public functions, classes and constants.

What models write is allowed where it is safe: reading a few dunder attributes (`type(x).__name__`,
`x.__class__`, `hasattr(obj, "__len__")`), defining the usual special methods in their own classes,
`nonlocal`, `match`, class-body annotations (for dataclasses and NamedTuple), `__name__`, and copies of
the namespace from globals()/locals()/vars(). What must stay out (files, network, processes, threads,
event loops) is refused with a message saying what to do instead (REFUSALS).
"""

from __future__ import annotations

import _string
import abc
import ast
import builtins
import collections
import copy
import dataclasses
import enum
import functools
import importlib
import inspect
import operator
import re
import string
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import (
    AsyncGeneratorType,
    BuiltinFunctionType,
    CodeType,
    CoroutineType,
    FrameType,
    FunctionType,
    GeneratorType,
    MethodType,
    ModuleType,
    TracebackType,
)
from typing import Any, NoReturn

from RestrictedPython import RestrictingNodeTransformer, compile_restricted_exec
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, IOPERATOR_TO_STR

from sandbox.coverage import Coverage, TrackedStr
from sandbox.interface import ALLOWED_MODULES
from sandbox.output import Output, Stream

MODULES: dict[str, ModuleType] = {name: importlib.import_module(name) for name in ALLOWED_MODULES}

# Public names that are still unsafe: singledispatch and typing.get_type_hints evaluate string annotations
# with eval() (ForwardRef holds the compiled code); update_wrapper/wraps copy attributes named by the
# caller; total_ordering, typing.final/no_type_check/dataclass_transform/runtime_checkable and
# enum.global_* write onto objects the code did not make; EnumType builds classes from any dict (as
# type() would); make_dataclass takes a namespace of any names; enum's pickle_by_* are __reduce_ex__
# implementations; time's setters change the host clock or zone. Safe versions of some are given below
# (Guards._overrides). (string.Formatter, which resolves "{0.__class__}" fields with host getattr, a known
# RestrictedPython CVE, is replaced by SafeFormatter.)
WITHHELD = {
    "functools": {"singledispatch", "singledispatchmethod", "update_wrapper", "wraps", "total_ordering"},
    "typing": {"get_type_hints", "ForwardRef", "final", "no_type_check", "no_type_check_decorator",
               "dataclass_transform", "runtime_checkable", "clear_overloads"},
    "enum": {"EnumMeta", "EnumType", "ReprEnum", "global_enum", "global_enum_repr", "global_flag_repr",
             "global_str", "pickle_by_enum_name", "pickle_by_global_name"},
    "dataclasses": {"make_dataclass"},
    "time": {"clock_settime", "clock_settime_ns", "tzset", "pthread_getcpuclockid"},
}
# Modules of which only these names are offered: io's in-memory files (its open/FileIO reach the disk).
SELECTED = {"io": {"StringIO", "BytesIO", "SEEK_SET", "SEEK_CUR", "SEEK_END", "UnsupportedOperation"}}
# Modules whose view is built by the REPL from its own pieces, not from the module's namespace.
SYNTHETIC_MODULES = {"sys", "traceback"}

# What the sandbox refuses by design, each with what to do instead (shown to the model).
REFUSALS = {
    "files": "files are not available in the sandbox: the input is the variable `context`; keep data in "
             "variables (io.StringIO works as an in-memory file)",
    "network": "the network is not available in the sandbox: ask models with llm_query, llm_query_batched or "
               "rlm_query",
    "processes": "processes are not available in the sandbox: run the code here directly (rlm_query runs a "
                 "nested RLM)",
    "threads": "threads are not available in the sandbox: use llm_query_batched for parallel calls",
    "event loops": "event loops are not available in the sandbox: llm_query returns its answer directly (no "
                   "await); use llm_query_batched for parallel calls",
}
REFUSED_MODULES = {
    **dict.fromkeys(("os", "pathlib", "shutil", "glob", "tempfile", "fileinput", "sqlite3", "zipfile",
                     "tarfile", "gzip", "bz2", "lzma", "pickle", "shelve", "dbm", "mmap"), "files"),
    **dict.fromkeys(("socket", "ssl", "urllib", "urllib3", "http", "requests", "httpx", "aiohttp", "ftplib",
                     "smtplib", "webbrowser", "selectors", "select"), "network"),
    **dict.fromkeys(("subprocess", "multiprocessing", "signal", "pty", "resource"), "processes"),
    **dict.fromkeys(("threading", "concurrent", "queue", "sched"), "threads"),
    "asyncio": "event loops",
}
TEXT_MODULES = {"re", "json", "textwrap", "difflib", "unicodedata", "string"}  # functions reading their args

FORBIDDEN_ATTRIBUTES = INSPECT_ATTRIBUTES | {"mro"}
# Dunder attributes code may read: names and documentation, and the special methods duck typing asks
# about. `__class__` gives what type() gives; `__init__` (super().__init__) and `__dict__` (of the code's own
# objects) are decided by Guards.
READABLE_DUNDERS = frozenset({
    "__class__", "__name__", "__qualname__", "__doc__", "__module__", "__len__", "__iter__", "__next__",
    "__contains__", "__getitem__", "__call__", "__enter__", "__exit__", "__str__", "__repr__", "__format__",
    "__hash__", "__bool__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
})
GUARDED_DUNDERS = READABLE_DUNDERS | {"__init__", "__dict__"}
# Special methods code may define in its classes. Not among them: __del__ (runs whenever the object is
# collected, outside the block's limits), __reduce__/__reduce_ex__/__copy__/__deepcopy__/__getstate__/
# __setstate__ (copy rebuilds objects through them, writing into objects the code may not modify),
# __getattribute__/__getattr__/__setattr__, __new__ and the class-creation hooks.
SPECIAL_METHODS = frozenset({
    "__init__", "__post_init__", "__repr__", "__str__", "__format__", "__len__", "__iter__", "__next__",
    "__reversed__", "__contains__", "__getitem__", "__setitem__", "__delitem__", "__missing__", "__eq__",
    "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__bool__", "__call__", "__enter__",
    "__exit__", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__",
    "__imul__", "__truediv__", "__rtruediv__", "__floordiv__", "__mod__", "__pow__", "__neg__", "__pos__",
    "__abs__", "__and__", "__or__", "__xor__", "__int__", "__float__", "__index__", "__round__",
})
# Attribute-name prefixes of frames, tracebacks, code objects and generators.
INTERNAL_PREFIXES = ("f_", "tb_", "co_", "gi_", "cr_", "ag_")
FORMAT_METHODS = {"format", "format_map"}
FRAME_LIKE = (FrameType, TracebackType, CodeType)
GENERATOR_LIKE = (GeneratorType, CoroutineType, AsyncGeneratorType)
GENERATOR_PREFIXES = ("gi_", "cr_", "ag_")
OPAQUE = (ModuleType, FrameType, TracebackType, CodeType)  # never handed to sandboxed code
ROUTINES = (FunctionType, BuiltinFunctionType, MethodType)
PLAIN_CONSTANTS = (int, float, complex, str, bytes, bool)
WRITABLE_DATA = (dict, list, set, bytearray, collections.deque)
PATTERN_READERS = {"search", "match", "fullmatch", "findall", "finditer", "sub", "subn", "split", "scanner"}
DIRABLE_TYPES = (str, bytes, bytearray, int, float, complex, bool, list, tuple, dict, set, frozenset, range,
                 slice, type(None))

SAFE_BUILTINS = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr", "classmethod",
    "complex", "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset", "hash", "hex", "id",
    "int", "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next", "object", "oct",
    "ord", "pow", "property", "range", "repr", "reversed", "round", "set", "slice", "sorted",
    "staticmethod", "str", "sum", "super", "tuple", "zip", "Ellipsis", "NotImplemented",
)
UNAVAILABLE_BUILTINS = {
    "open": REFUSALS["files"], "input": "there is no user to ask", "exec": "run the code directly",
    "eval": "run the code directly", "compile": "run the code directly", "help": "there is no help system",
    "breakpoint": "there is no debugger", "exit": "the block ends when its code ends",
    "quit": "the block ends when its code ends", "memoryview": "use bytes",
}
INPLACE_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
    ">>=": operator.irshift, "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
    "@=": operator.imatmul,
}


class PolicyError(Exception):
    """The block was rejected before running (a syntax error or a construct the sandbox forbids)."""


class SandboxTransformer(RestrictingNodeTransformer):
    """RestrictedPython's policy, plus: annotated assignments (kept in class bodies, where dataclasses and
    NamedTuple read them; elsewhere plain assignments), augmented assignment of attributes and items
    (`self.n += 1`, `counts[word] += 1`), reading the dunder attributes the guard decides on
    (GUARDED_DUNDERS, e.g. `super().__init__`, `type(x).__name__`), reading `__name__`, defining the
    SPECIAL_METHODS in classes, `nonlocal`, and `match` (attribute names in class patterns checked here,
    since the interpreter looks them up itself).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._class_annotations: set[int] = set()  # ids of the AnnAssign nodes directly in class bodies

    def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
        if allow_magic_methods and name in SPECIAL_METHODS:
            return
        super().check_name(node, name, allow_magic_methods)

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id == "__name__" and isinstance(node.ctx, ast.Load):
            return node
        return super().visit_Name(node)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if node.attr not in GUARDED_DUNDERS or not isinstance(node.ctx, ast.Load):
            return super().visit_Attribute(node)
        node = self.node_contents_visit(node)
        read = ast.Call(ast.Name("_getattr_", ast.Load()), [node.value, ast.Constant(node.attr)], [])
        ast.copy_location(read, node)
        return ast.fix_missing_locations(read)

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        self._class_annotations.update(id(statement) for statement in node.body
                                       if isinstance(statement, ast.AnnAssign)
                                       and isinstance(statement.target, ast.Name))
        return super().visit_ClassDef(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        if id(node) in self._class_annotations:
            return self.node_contents_visit(node)  # the annotation is guarded like any expression
        # Elsewhere the annotation is dropped, never evaluated: it can only matter to tools that read it.
        replacement: ast.stmt = ast.Pass() if node.value is None else ast.Assign([node.target], node.value)
        ast.copy_location(replacement, node)
        return self.visit(replacement)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> Any:
        for name in node.names:
            self.check_name(node, name)
        return node

    # Patterns with nothing to check but their parts (names and class patterns are checked below).
    visit_Match = visit_match_case = visit_MatchValue = visit_MatchSingleton = visit_MatchSequence = \
        visit_MatchOr = RestrictingNodeTransformer.node_contents_visit

    def visit_MatchStar(self, node: ast.MatchStar) -> Any:
        self.check_name(node, node.name)
        return node

    def visit_MatchAs(self, node: ast.MatchAs) -> Any:
        self.check_name(node, node.name)
        return self.node_contents_visit(node)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> Any:
        self.check_name(node, node.rest)
        return self.node_contents_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> Any:
        """`case C(name=pattern)` reads `subject.name` with the interpreter's own getattr: only names no
        object guards are allowed. (Positional patterns read the names in C.__match_args__, which code can
        only set through dataclass fields, checked by Guards.dataclass.)"""
        for name in node.kwd_attrs:
            if not is_plain_attribute_name(name):
                self.error(node, f'"{name}" cannot be matched as an attribute in the sandbox')
        return self.node_contents_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        """`x.a op= v` becomes `_write_(x).a = _inplacevar_(op, _getattr_(x, 'a'), v)`, and `x[k] op= v`
        becomes `_write_(x)[k] = _inplacevar_(op, _getitem_(x, k), v)`, evaluating x and k once."""
        target = node.target
        if not isinstance(target, (ast.Attribute, ast.Subscript)):
            return super().visit_AugAssign(node)
        attribute = target.attr if isinstance(target, ast.Attribute) else ""
        if attribute.startswith("_") or attribute in INSPECT_ATTRIBUTES:
            self.error(node, f'"{attribute}" is an invalid attribute name.')
        statements: list[ast.stmt] = []
        temporaries: list[str] = []

        def once(expression: ast.expr) -> Callable[[], ast.expr]:
            """Copies of `expression`, stored first in a temporary unless evaluating it twice is harmless
            (a name, a constant; slice bounds are the exception: they are evaluated twice)."""
            if isinstance(expression, (ast.Name, ast.Constant, ast.Slice)):
                return lambda: copy.deepcopy(expression)
            name = self.gen_tmp_name()
            temporaries.append(name)
            statements.append(ast.Assign([ast.Name(name, ast.Store())], expression))
            return lambda: ast.Name(name, ast.Load())

        obj = once(self.visit(target.value))
        value = self.visit(node.value)
        op = ast.Constant(IOPERATOR_TO_STR[type(node.op)])
        written = ast.Call(ast.Name("_write_", ast.Load()), [obj()], [])
        if isinstance(target, ast.Attribute):
            current = ast.Call(ast.Name("_getattr_", ast.Load()), [obj(), ast.Constant(target.attr)], [])
            store: ast.expr = ast.Attribute(written, target.attr, ast.Store())
        else:
            key = once(self.visit(target.slice))
            current = ast.Call(ast.Name("_getitem_", ast.Load()), [obj(), key()], [])
            store = ast.Subscript(written, key(), ast.Store())
        update = ast.Call(ast.Name("_inplacevar_", ast.Load()), [op, current, value], [])
        statements.append(ast.Assign([store], update))
        if temporaries:
            statements.append(ast.Delete([ast.Name(name, ast.Del()) for name in temporaries]))
        for statement in statements:
            ast.copy_location(statement, node)
            ast.fix_missing_locations(statement)
        return statements


def compile_block(source: str, filename: str) -> CodeType:
    try:
        result = compile_restricted_exec(source, filename=filename, policy=SandboxTransformer)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise PolicyError(f"{type(error).__name__}: {error}") from None
    if result.errors or result.code is None:
        raise PolicyError("\n".join(result.errors))
    return result.code


def is_plain_attribute_name(name: str) -> bool:
    """A name check_attribute allows on every object."""
    return not (name.startswith("_") or name in FORBIDDEN_ATTRIBUTES or name.startswith(INTERNAL_PREFIXES)
                or name in ("obj", "register"))


def check_attribute(obj: object, name: object) -> None:
    """Raises unless sandboxed code may read `obj.<name>`."""
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name.startswith("_") and name not in READABLE_DUNDERS:
        raise AttributeError(f'"{name}" is an invalid attribute name because it starts with "_"')
    if (name in FORBIDDEN_ATTRIBUTES or isinstance(obj, FRAME_LIKE)
            or (isinstance(obj, GENERATOR_LIKE) and name.startswith(GENERATOR_PREFIXES))):
        raise AttributeError(f'"{name}" is a restricted name in the sandbox')
    if name == "obj" and isinstance(obj, BaseException):
        raise AttributeError('"obj" of exceptions is not available in the sandbox')
    if name == "register" and isinstance(obj, abc.ABCMeta):
        # It would make host types (generators, frames) instances of the code's own classes, whose
        # __match_args__ a class pattern reads with the interpreter's getattr.
        raise AttributeError("ABC.register is not available in the sandbox")


def is_str_formatter(value: object) -> bool:
    """str.format / format_map however reached (e.g. through super()), bound or not."""
    if value is str.format or value is str.format_map:
        return True
    return (type(value) is BuiltinFunctionType and value.__name__ in FORMAT_METHODS
            and isinstance(value.__self__, str))


def check_value(value: object, what: str) -> None:
    if isinstance(value, OPAQUE) or is_str_formatter(value):
        raise AttributeError(f"{what} is not available in the sandbox")


def guarded_getattr(obj: object, name: str) -> Any:
    check_attribute(obj, name)
    if name == "__class__":
        return SandboxType(obj)
    value = getattr(obj, name)
    check_value(value, f"{name!r}")
    return value


def guarded_getitem(obj: Any, key: Any) -> Any:
    value = obj[key]
    check_value(value, "this item")
    return value


class SafeFormatter(string.Formatter):
    """str.format's machinery with field lookups ("{0.name}", "{0[key]}", "{name}") checked as the code's
    own attribute and item reads are. What sandboxed code gets for string.Formatter, and what every
    route to str.format / str.format_map (a str, the str type, super(), collections.UserString) runs."""

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return guarded_getitem(args if isinstance(key, int) else kwargs, key)

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
        first, rest = _string.formatter_field_name_split(field_name)
        value = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            value = guarded_getattr(value, key) if is_attribute else guarded_getitem(value, key)
        return value, first


SAFE_FORMATTER = SafeFormatter()


def safe_format(template: str, /, *args: Any, **kwargs: Any) -> str:
    """str.format, with field lookups guarded."""
    if not isinstance(template, str):
        raise TypeError(f"format() needs a str template, not {type(template).__name__}")
    return SAFE_FORMATTER.vformat(template, args, kwargs)


def safe_format_map(template: str, mapping: Mapping[str, Any], /) -> str:
    """str.format_map, with field lookups guarded."""
    if not isinstance(template, str):
        raise TypeError(f"format_map() needs a str template, not {type(template).__name__}")
    return SAFE_FORMATTER.vformat(template, (), mapping)


def guard_stdlib_formatting() -> None:
    """Routes the one allowed stdlib class that formats with str.format on the caller's template,
    collections.UserString, through the safe formatter. Patched on the class itself (once, in the worker
    process): a subclass would leave the original reachable through super()."""
    collections.UserString.format = lambda self, /, *args, **kwargs: safe_format(self.data, *args, **kwargs)
    collections.UserString.format_map = lambda self, mapping: safe_format_map(self.data, mapping)


class ModuleView:
    """What `import <module>` gives sandboxed code: the module's public functions, classes and constants.

    It holds no module object, has no `__name__` (so `from x import y` cannot fall back to sys.modules)
    and cannot be modified.
    """

    def __init__(self, name: str, members: dict[str, Any]) -> None:
        self.__dict__.update(members)
        self.__dict__["_module_name"] = name

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("modules are read-only in the sandbox")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("modules are read-only in the sandbox")

    def __getattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"module {self._module_name!r} has no attribute {name!r} in the sandbox")

    def __repr__(self) -> str:
        return f"<sandboxed module {self._module_name!r}>"


class _TypeOf(type):
    """Metaclass of the sandbox's `type`: one-argument calls only; isinstance/issubclass work as usual."""

    def __call__(cls, obj: object, *more: object) -> type:  # type: ignore[override]
        if more:
            raise TypeError("type() takes exactly one argument in the sandbox (use a class statement)")
        actual = type(obj)
        if actual is TrackedStr:
            return str
        # Metaclasses stay out of reach: calling one builds classes from arbitrary dicts.
        return cls if issubclass(actual, type) else actual

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, type)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, type)

    def __repr__(cls) -> str:
        return "<class 'type'>"


class SandboxType(metaclass=_TypeOf):
    """The sandbox's `type`."""


def _unavailable(name: str, reason: str) -> Callable[..., NoReturn]:
    def unavailable(*args: object, **kwargs: object) -> NoReturn:
        raise PermissionError(f"{name}() is not available in the sandbox ({reason})")

    unavailable.__name__ = unavailable.__qualname__ = name
    return unavailable


def _apply(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


def _inplace(op: str, target: Any, value: Any) -> Any:
    return INPLACE_OPERATORS[op](target, value)


class Guards:
    """The runtime half of the policy for one REPL: guard functions, builtins and module views.

    `output` collects what the block prints (print, sys.stdout/stderr); `describe` renders an exception as
    the model sees it (for the traceback module); `sleep` is time.sleep within the block's limits.
    """

    def __init__(self, coverage: Coverage, output: Output, describe: Callable[[BaseException], str],
                 sleep: Callable[[float], None]) -> None:
        self._coverage = coverage
        self._output = output
        self._describe = describe
        self._sleep = sleep
        self._own_classes: weakref.WeakSet[type] = weakref.WeakSet()  # classes the sandbox defined
        self.modules = {name: self._view(name, module) for name, module in MODULES.items()}
        self.builtins = self._builtins(output.collector)

    def _builtins(self, print_factory: Callable[..., Any]) -> dict[str, Any]:
        """A fresh builtins dict (never RestrictedPython's shared one, never the real one)."""
        namespace: dict[str, Any] = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
        namespace.update({name: value for name, value in vars(builtins).items()
                          if isinstance(value, type) and issubclass(value, BaseException)
                          and not issubclass(value, BaseExceptionGroup)})
        namespace.update({name: _unavailable(name, reason) for name, reason in UNAVAILABLE_BUILTINS.items()})
        namespace.update({
            "type": SandboxType, "getattr": self.getattr, "hasattr": self.hasattr, "setattr": self.setattr,
            "delattr": self.delattr, "dir": self.dir, "globals": self.globals, "locals": self.locals,
            "vars": self.vars, "__import__": self.import_module,
            "__build_class__": self.build_class, "__metaclass__": type,
            "_getattr_": self.getattr, "_getitem_": self.getitem, "_getiter_": iter, "_write_": self.write,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_inplacevar_": _inplace, "_apply_": _apply, "_print_": print_factory,
        })
        return namespace

    # Reading

    def getattr(self, obj: object, name: str, *default: object) -> Any:
        """Attribute reads, written or computed. With a default, one the guard refuses is missing."""
        if name == "__init__":
            return self._init_of(obj)
        if name == "__dict__":
            if not isinstance(obj, type) and self._is_own(obj):
                return obj.__dict__
            if default:
                return default[0]
            raise AttributeError('"__dict__" is available on your own objects only (vars() works too)')
        try:
            check_attribute(obj, name)
        except AttributeError:
            if default:
                return default[0]
            raise
        if name == "__class__":
            return SandboxType(obj)
        value = getattr(obj, name, *default)
        if is_str_formatter(value):
            return self._safe_formatter(value)
        check_value(value, f"{name!r}")
        if type(obj) is re.Pattern and name in PATTERN_READERS:
            return self._noting_reads(value)
        return value

    def hasattr(self, obj: object, name: str) -> bool:
        try:
            self.getattr(obj, name)
        except AttributeError:
            return False
        return True

    getitem = staticmethod(guarded_getitem)

    def dir(self, *args: object) -> list[str]:
        if not args:
            return sorted(self._caller_namespace(locals_=True))
        if len(args) != 1:
            raise TypeError(f"dir expected at most 1 argument, got {len(args)}")
        (obj,) = args
        if not (isinstance(obj, (ModuleView, *DIRABLE_TYPES)) or obj in DIRABLE_TYPES or self._is_own(obj)):
            raise TypeError("dir() works on modules, basic values and your own classes and objects")
        return sorted(name for name in dir(obj) if not name.startswith("_"))

    def globals(self) -> dict[str, Any]:
        """A copy of the block's variables: changing it does not change them."""
        return self._caller_namespace(locals_=False)

    def locals(self) -> dict[str, Any]:
        """A copy of the calling function's variables (the block's, at top level)."""
        return self._caller_namespace(locals_=True)

    def vars(self, *args: object) -> dict[str, Any]:
        """vars(): as locals(). vars(x): the attributes of your own object (its real __dict__) or class, or
        of a module."""
        if not args:
            return self._caller_namespace(locals_=True)
        if len(args) != 1:
            raise TypeError(f"vars expected at most 1 argument, got {len(args)}")
        (obj,) = args
        if isinstance(obj, ModuleView):
            return {key: value for key, value in vars(obj).items() if not key.startswith("_")}
        if self._is_own(obj):
            if not isinstance(obj, type):
                return obj.__dict__  # type: ignore[no-any-return]
            return {key: value for key, value in vars(obj).items() if not key.startswith("_")}
        raise TypeError("vars() works on your own classes and objects and on modules in the sandbox")

    def _caller_namespace(self, locals_: bool) -> dict[str, Any]:
        """The variables of the nearest sandboxed frame up the stack (host helpers such as _apply_ may
        stand in between), without the names sandboxed code cannot use."""
        frame: FrameType | None = sys._getframe(2)
        while frame is not None and frame.f_builtins is not self.builtins:
            frame = frame.f_back
        if frame is None:
            raise RuntimeError("no sandboxed code is running")
        namespace = frame.f_locals if locals_ else frame.f_globals
        return {name: value for name, value in namespace.items() if not name.startswith("_")}

    # Writing

    def write(self, obj: Any) -> Any:
        """The object itself when the code may modify it (set/delete attributes or items), else raises."""
        if isinstance(obj, type) and obj in self._own_classes:
            return obj
        if not isinstance(obj, type) and (isinstance(obj, WRITABLE_DATA) or type(obj) in self._own_classes):
            return obj
        raise TypeError(f"cannot modify {type(obj).__name__} objects in the sandbox: only dict, list and set "
                        "values and your own classes and their instances can be changed")

    def setattr(self, obj: object, name: str, value: object) -> None:
        self._check_written_name(name)
        setattr(self.write(obj), name, value)

    def delattr(self, obj: object, name: str) -> None:
        self._check_written_name(name)
        delattr(self.write(obj), name)

    # Classes and imports

    def build_class(self, body: Callable[[], None], name: str, *bases: type, **keywords: Any) -> type:
        """Every class statement. RestrictedPython drops class keywords and rejects `metaclass=`; the
        `metaclass=__metaclass__` it adds is `type`, so `type` is what builds the class."""
        cls: type = builtins.__build_class__(body, name, *bases, metaclass=type)
        self._own_classes.add(cls)
        return cls

    def import_module(self, name: str, globals: object = None, locals: object = None,
                      fromlist: Iterable[str] | None = (), level: int = 0) -> ModuleView | None:
        if type(fromlist) is list and level == 0 and name in sys.modules:
            # C code importing for itself (datetime.strftime needs `time`) goes through PyImport_Import,
            # which calls the current frame's __import__ with a list and then takes the module from
            # sys.modules, ignoring what we return: the module reaches that C code only, never the sandbox.
            # Import statements pass None or a tuple.
            return None
        view = self.modules.get(name) if level == 0 else None
        refusal = REFUSED_MODULES.get(name.partition(".")[0])
        if view is None and refusal is not None:
            raise ImportError(f"module {name!r} is not available: {REFUSALS[refusal]}", name=name)
        if view is None:
            raise ImportError(f"module {name!r} is not available in the sandbox; the allowed modules are: "
                              f"{', '.join(ALLOWED_MODULES)}", name=name)
        return view

    # Helpers

    def _init_of(self, obj: object) -> Any:
        """`__init__` for `super().__init__(...)` and `Parent.__init__(self, ...)`, judged by what it
        resolves to (never by what it is read from: `super(E, E).__init__` of a subclass E of a host class
        is the host class's unbound __init__): one the code defined itself, whatever it is applied to, or
        one bound to the code's own object. A host object (such as a module view) is never re-initialised."""
        method = obj.__init__  # type: ignore[misc]
        function = getattr(method, "__func__", method)
        if isinstance(function, FunctionType) and function.__builtins__ is self.builtins:
            return method
        bound_to = getattr(method, "__self__", None)
        if bound_to is not None and not isinstance(bound_to, super) and self._is_own(bound_to):
            return method
        raise AttributeError('"__init__" is available on super() and on your own classes and objects only')

    def _safe_formatter(self, method: Any) -> Callable[..., str]:
        """The safe equivalent of str.format / format_map, unbound or bound to its template; formatting
        a text reads all of it."""
        formatter = safe_format_map if method.__name__ == "format_map" else safe_format
        bound = getattr(method, "__self__", None)  # the template; None for str.format itself

        def format_text(*args: Any, **kwargs: Any) -> str:
            if bound is not None:
                args = (bound, *args)
            if not args:
                raise TypeError(f"{method.__name__}() needs a str template")
            self._coverage.note(args[0])
            return formatter(*args, **kwargs)

        format_text.__name__ = method.__name__
        return format_text

    def _is_own(self, obj: object) -> bool:
        return obj in self._own_classes if isinstance(obj, type) else type(obj) in self._own_classes

    @staticmethod
    def _check_written_name(name: object) -> None:
        if type(name) is not str:
            raise TypeError("attribute name must be a str")
        if name.startswith("_"):
            raise AttributeError(f'"{name}" is an invalid attribute name because it starts with "_"')

    def _noting_reads(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, recording as read any context text passed to it (C code reads it unseen)."""
        note = self._coverage.note

        def reading(*args: Any, **kwargs: Any) -> Any:
            for value in args:
                note(value)
            for value in kwargs.values():
                note(value)
            return function(*args, **kwargs)

        return _named_like(reading, function)

    def _view(self, name: str, module: ModuleType) -> ModuleView:
        if name in SYNTHETIC_MODULES:
            return ModuleView(name, self._synthetic_members(name))
        names = getattr(module, "__all__", None) or list(vars(module))
        names = [key for key in names if not key.startswith("_") and key not in WITHHELD.get(name, ())
                 and (name not in SELECTED or key in SELECTED[name])]
        values = {key: getattr(module, key) for key in names}
        classes = {value for value in values.values() if isinstance(value, type)}
        members = {}
        for key, value in values.items():
            if isinstance(value, ROUTINES):
                if name == "re":
                    value = _without_debug_flag(value)
                members[key] = self._noting_reads(value) if name in TEXT_MODULES else value
            elif (isinstance(value, type) or type(value) in classes or _is_plain_constant(value)
                  or (name == "typing" and not isinstance(value, ModuleType))):  # List, Optional, Any, ...
                members[key] = value
            elif type(value) is set and _is_plain_constant(frozenset(value)):  # hashlib.algorithms_*
                members[key] = frozenset(value)
        members.update(self._overrides(name))
        return ModuleView(name, members)

    def _overrides(self, module: str) -> dict[str, Any]:
        """Safe versions of members that would reach past the guards (host getattr, writes, the clock)."""
        if module == "functools":
            return {"wraps": self._wraps, "total_ordering": self._total_ordering}
        if module == "string":
            return {"Formatter": SafeFormatter}
        if module == "operator":
            return {"attrgetter": self._attrgetter, "methodcaller": self._methodcaller,
                    "itemgetter": self._itemgetter, "getitem": self.getitem, "setitem": self._setitem,
                    "delitem": self._delitem}
        if module == "dataclasses":
            return {"dataclass": self._dataclass}
        if module == "enum":
            return {cls.__name__: cls for cls in GUARDED_ENUMS}
        if module == "time":
            return {"sleep": self._sleep}
        return {}

    def _synthetic_members(self, module: str) -> dict[str, Any]:
        if module == "sys":
            stream = Stream(self._output)
            return {"stdout": stream, "stderr": stream, "argv": [""], "version": sys.version,
                    "version_info": tuple(sys.version_info), "maxsize": sys.maxsize,
                    "maxunicode": sys.maxunicode, "byteorder": sys.byteorder, "platform": sys.platform,
                    "getsizeof": sys.getsizeof, "getrecursionlimit": sys.getrecursionlimit,
                    "getdefaultencoding": sys.getdefaultencoding, "exit": _exit}
        return {"format_exc": self._format_exc, "print_exc": self._print_exc,
                "format_exception": self._format_exception, "print_exception": self._print_exception,
                "format_exception_only": self._format_exception_only}

    # operator, without host getattr and writes

    def _attrgetter(self, name: str, *more: str) -> Callable[[Any], Any]:
        paths = [path.split(".") if isinstance(path, str) else path for path in (name, *more)]
        if not all(isinstance(path, list) for path in paths):
            raise TypeError("attribute name must be a string")

        def get(obj: Any) -> Any:
            found = [functools.reduce(self.getattr, path, obj) for path in paths]
            return found[0] if len(found) == 1 else tuple(found)

        return get

    def _methodcaller(self, name: str, /, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        if not isinstance(name, str):
            raise TypeError("method name must be a string")
        return lambda obj: self.getattr(obj, name)(*args, **kwargs)

    def _itemgetter(self, item: Any, *more: Any) -> Callable[[Any], Any]:
        if not more:
            return lambda obj: self.getitem(obj, item)
        return lambda obj: tuple(self.getitem(obj, key) for key in (item, *more))

    def _setitem(self, obj: Any, key: Any, value: Any) -> None:
        self.write(obj)[key] = value

    def _delitem(self, obj: Any, key: Any) -> None:
        del self.write(obj)[key]

    # dataclasses

    def _dataclass(self, cls: type | None = None, /, **options: Any) -> Any:
        """dataclasses.dataclass on the code's own classes; the class it returns (a new one with slots=True)
        is the code's own too. Field names must be ones no object guards: they become __match_args__."""

        def decorate(target: type) -> type:
            if not (isinstance(target, type) and target in self._own_classes):
                raise TypeError("dataclasses.dataclass works on your own classes only")
            for name in vars(target).get("__annotations__", {}):
                if not is_plain_attribute_name(name):
                    raise TypeError(f"{name!r} cannot be a dataclass field in the sandbox")
            made: type = dataclasses.dataclass(**options)(target)
            self._own_classes.add(made)
            return made

        return decorate if cls is None else decorate(cls)

    # traceback, as the model sees errors

    def _format_exception_only(self, exc: object, /, *more: Any) -> list[str]:
        return self._exception_lines(exc, *more)[-1:]

    def _format_exception(self, exc: object, /, *more: Any, **options: Any) -> list[str]:
        """The short traceback through the code's own blocks (host frames and paths left out)."""
        return self._exception_lines(exc, *more)

    def _exception_lines(self, exc: object, *more: Any) -> list[str]:
        """For (exc) or the older (type, value, tb) arguments; the traceback object is never read."""
        error = exc if isinstance(exc, BaseException) else more[0] if more else None
        if not isinstance(error, BaseException):
            return ["NoneType: None\n"]
        return [line + "\n" for line in self._describe(error).split("\n")]

    def _format_exc(self, limit: int | None = None, chain: bool = True) -> str:
        return "".join(self._exception_lines(sys.exception()))

    def _print_exc(self, limit: int | None = None, file: Any = None, chain: bool = True) -> None:
        (file or Stream(self._output)).write(self._format_exc())

    def _print_exception(self, exc: BaseException, /, *more: Any, file: Any = None, **options: Any) -> None:
        (file or Stream(self._output)).write("".join(self._exception_lines(exc, *more)))

    def _wraps(self, wrapped: object) -> Callable[[FunctionType], FunctionType]:
        """functools.wraps onto functions the sandbox defined, copying the usual attributes but not the
        wrapped object's __dict__ (which for host objects holds what the code must not see)."""

        def decorate(wrapper: FunctionType) -> FunctionType:
            if not (isinstance(wrapper, FunctionType) and wrapper.__builtins__ is self.builtins):
                raise TypeError("functools.wraps decorates your own functions only")
            return functools.update_wrapper(wrapper, wrapped, updated=())  # type: ignore[arg-type]

        return decorate

    def _total_ordering(self, cls: type) -> type:
        if cls not in self._own_classes:
            raise TypeError("functools.total_ordering works on your own classes only")
        return functools.total_ordering(cls)


def _exit(status: object = None) -> NoReturn:
    """sys.exit: ends the block with SystemExit, as it would end a script."""
    raise SystemExit(status)


class _GuardedEnumType(enum.EnumType):
    """The metaclass of the sandbox's Enum classes: the functional API (`Enum("Color", names)`) takes
    member names only, never dunder names (which it would install as special methods: __del__,
    __reduce_ex__, ...)."""

    def __call__(cls, value: Any, names: Any = None, *args: Any, **kwargs: Any) -> Any:
        if names is not None:
            if isinstance(names, str):
                keys = names.replace(",", " ").split()
            elif isinstance(names, Mapping):
                keys = list(names)
            else:
                keys = [item if isinstance(item, str) else item[0] for item in names]
            if any(not isinstance(key, str) or key.startswith("_") for key in keys):
                raise ValueError("enum member names may not start with '_' in the sandbox")
            kwargs.setdefault("module", "__main__")  # where the code runs, not this module
        return super().__call__(value, names, *args, **kwargs)


class Enum(enum.Enum, metaclass=_GuardedEnumType):
    """enum.Enum."""


class IntEnum(enum.IntEnum, metaclass=_GuardedEnumType):
    """enum.IntEnum."""


class StrEnum(enum.StrEnum, metaclass=_GuardedEnumType):
    """enum.StrEnum."""


class Flag(enum.Flag, metaclass=_GuardedEnumType):
    """enum.Flag."""


class IntFlag(enum.IntFlag, metaclass=_GuardedEnumType):
    """enum.IntFlag."""


GUARDED_ENUMS = (Enum, IntEnum, StrEnum, Flag, IntFlag)


def _without_debug_flag(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (from `re`), refusing re.DEBUG: compiling with it prints the pattern's parse tree
    straight to the process's stdout, outside the block's output."""
    try:
        position = list(inspect.signature(function).parameters).index("flags")
    except ValueError:
        return function

    def checked(*args: Any, **kwargs: Any) -> Any:
        flags = args[position] if len(args) > position else kwargs.get("flags", 0)
        if isinstance(flags, int) and flags & re.DEBUG:
            raise ValueError("re.DEBUG is not available in the sandbox (it prints outside your output)")
        return function(*args, **kwargs)

    return _named_like(checked, function)


def _named_like(wrapper: Callable[..., Any], function: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper with the wrapped function's name and help, for the model's tracebacks and dir()."""
    return functools.update_wrapper(wrapper, function, assigned=("__name__", "__qualname__", "__doc__"),
                                    updated=())


def _is_plain_constant(value: object) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_is_plain_constant(item) for item in value)
    return type(value) in PLAIN_CONSTANTS
