"""Known sandbox escapes for RestrictedPython and Python sandboxes in general, as code blocks.

Each block prints "ESCAPED" (with what it reached) if, and only if, its attack worked, and otherwise ends
with an exception: every attack must end in an "error" outcome. Blocks that try to write a file write to
PROBE_PATH; blocks that look for secrets look for the environment variable CANARY_VARIABLE.
"""

from __future__ import annotations

PROBE_PATH = "/tmp/rlm-sandbox-escape-probe"
CANARY_VARIABLE = "RLM_SANDBOX_TEST_CANARY"

ATTACKS: dict[str, str] = {
    # Generator, coroutine and async-generator frames (CVE-2023-37271 and the 8.5 ag_* additions)
    "generator_gi_frame": "def g():\n    yield 1\nprint('ESCAPED', g().gi_frame.f_back.f_globals)",
    "generator_gi_frame_computed": (
        "def g():\n    yield 1\nframe = getattr(g(), 'gi_' + 'frame')\nprint('ESCAPED', frame)"),
    "genexp_frame_walk": (
        "gen = (i for i in [1])\nframe = getattr(gen, 'gi_frame')\n"
        "print('ESCAPED', getattr(getattr(frame, 'f_back'), 'f_globals'))"),
    "generator_gi_code": "def g():\n    yield 1\nprint('ESCAPED', getattr(g(), 'gi_code'))",
    "generator_gi_yieldfrom": (
        "def inner():\n    yield 1\ndef outer():\n    yield from inner()\no = outer()\nnext(o)\n"
        "print('ESCAPED', getattr(o, 'gi_yieldfrom'))"),
    "coroutine_cr_frame": "async def c():\n    pass\nprint('ESCAPED', c().cr_frame)",
    "async_generator_ag_frame": "async def a():\n    yield 1\nprint('ESCAPED', getattr(a(), 'ag_frame'))",
    # Traceback frames
    "traceback_frame_walk": (
        "try:\n    1 / 0\nexcept Exception as e:\n    print('ESCAPED', e.__traceback__.tb_frame.f_globals)"),
    "traceback_computed_name": (
        "try:\n    1 / 0\nexcept Exception as e:\n    print('ESCAPED', getattr(e, '__trace' + 'back__'))"),
    "exception_context_chain": (
        "try:\n    try:\n        1 / 0\n    except Exception:\n        raise KeyError('x')\n"
        "except KeyError as e:\n    print('ESCAPED', getattr(e, '__context__'))"),
    # str.format and string.Formatter field lookups (CVE-2023-41039, CVE-2024-47532, CVE-2026-76825)
    "format_field_class": "print('ESCAPED {0.__class__.__mro__}'.format(1))",
    "format_subclasses": "fmt = '{0.__class__.__base__.__subclasses__}'\nprint('ESCAPED', fmt.format(0))",
    "format_on_the_str_type": "print('ESCAPED', str.format('{0.__globals__}', lambda: 0))",
    "format_map": "print('ESCAPED', '{a.__class__.__base__}'.format_map({'a': 1}))",
    "format_computed_name": "print('ESCAPED', getattr('{0.__class__.__base__}', 'for' + 'mat')(1))",
    "format_through_map": "print('ESCAPED', list(map(str.format, ['{0.__class__.__base__}'], [1])))",
    "format_through_super": (
        "class S(str):\n    pass\n"
        "bound = getattr(super(S, S('{0.__class__.__base__}')), 'format')\nprint('ESCAPED', bound(1))"),
    "format_on_the_context": "print('ESCAPED', (context + '{0.__class__}').format_map({'0': 1}))",
    "string_formatter": (
        "import string\nprint('ESCAPED', string.Formatter().format('{0.__class__.__base__}', 1))"),
    "string_formatter_from_import": (
        "from string import Formatter\nprint('ESCAPED', Formatter().vformat('{0.__globals__}', [len], {}))"),
    "string_formatter_own_get_field": (
        "import string\nclass F(string.Formatter):\n    def get_field(self, name, args, kwargs):\n"
        "        return getattr(args[0].__class__, '__base__'), name\n"
        "print('ESCAPED', F().format('{0}', 1))"),
    "format_item_then_attribute": "print('ESCAPED', '{0[0].__class__.__base__}'.format([1]))",
    "format_nested_spec_field": "print('ESCAPED', '{0:{1.__class__}}'.format(1, 2))",
    "format_keyword_field": "print('ESCAPED', '{x.__class__.__bases__}'.format(x=1))",
    "format_through_an_unbound_method": "f = str.format\nprint('ESCAPED', f('{0.__class__.__base__}', 1))",
    # Everything else that reaches the formatting machinery (found in a second attack round)
    "userstring_format": (
        "import collections\n"
        "print('ESCAPED', collections.UserString('{0.__class__.__base__.__subclasses__}').format(()))"),
    "userstring_format_map": (
        "import collections\n"
        "print('ESCAPED', collections.UserString('{a.__class__.__base__}').format_map({'a': 1}))"),
    "userstring_format_through_super": (
        "import collections\nclass U(collections.UserString):\n    def format(self, *args):\n"
        "        return 'mine'\nu = U('{0.__class__.__base__}')\nprint('ESCAPED', super(U, u).format(1))"),
    "userstring_data_as_template": (
        "import collections\nclass U(collections.UserString):\n    pass\nu = U('x')\n"
        "u.data = '{0.__class__.__base__}'\nprint('ESCAPED', u.format(1))"),
    "format_builtin_with_a_field_spec": "print('ESCAPED', format(1, '{0.__class__}'))",
    "percent_with_a_mapping": (
        "import collections\nprint('ESCAPED %(__class__)s' % collections.UserDict(a=1))"),
    # super() resolving to a host class's unbound __init__ (re-initialising a module view or the context)
    "super_init_of_a_module_view": (
        "import re\nclass E(type(re)):\n    pass\n"
        "getattr(super(E, E), '__init__')(re, 're', {'findall': 1})\nprint('ESCAPED', re.findall)"),
    "super_init_written_out": (
        "import re\nclass E(type(re)):\n    pass\nsuper(E, E).__init__(re, 're', {'x': 1})\n"
        "print('ESCAPED', re.x)"),
    "super_init_of_a_host_dict_type": (
        "class E(dict):\n    pass\ntarget = {}\nsuper(E, E).__init__(target, a=1)\nprint('ESCAPED', target)"),
    "super_init_on_the_context": (
        "class E(type(context)):\n    pass\nsuper(E, E).__init__(context)\nprint('ESCAPED')"),
    # AttributeError.obj (CVE-2024-47532) and try/except* (CVE-2025-22153)
    "attribute_error_obj": "try:\n    (1).nope\nexcept AttributeError as e:\n    print('ESCAPED', e.obj)",
    "attribute_error_obj_computed": (
        "try:\n    (1).nope\nexcept AttributeError as e:\n    print('ESCAPED', getattr(e, 'o' + 'bj'))"),
    "try_star": "try:\n    1 / 0\nexcept* ZeroDivisionError as group:\n    print('ESCAPED', group)",
    # Positional-only parameters shadowing guard hooks (CVE-2026-55830) and other hook rebinding
    "positional_only_hook_shadowing": (
        "def f(_getattr_, /):\n    return ().__class__\nprint('ESCAPED', f(lambda o, n: o))"),
    "default_argument_hook_shadowing": "def f(_getattr_=None):\n    return 1\nprint('ESCAPED')",
    "rebinding_a_hook": "_getattr_ = lambda o, n: o\nprint('ESCAPED')",
    "global_builtins": "global __builtins__\n__builtins__ = {}\nprint('ESCAPED')",
    "builtins_subscript": "print('ESCAPED', __builtins__['open'])",
    # Subclass walks to reach os/subprocess through object.__subclasses__()
    "subclass_walk": "print('ESCAPED', ().__class__.__bases__[0].__subclasses__())",
    "subclass_walk_computed": (
        "cls = getattr((), '__cl' + 'ass__')\nbase = getattr(cls, '__ba' + 'se__')\n"
        "print('ESCAPED', getattr(base, '__subcl' + 'asses__')())"),
    "subclass_walk_via_type": "print('ESCAPED', getattr(object, '__subclasses__')())",
    "mro_method": "print('ESCAPED', int.mro()[-1])",
    "mro_computed": "print('ESCAPED', getattr(type(1), 'm' + 'ro')())",
    "subclass_walk_in_fstring": "print(f\"ESCAPED {().__class__.__base__}\")",
    "vars_of_object": "print('ESCAPED', vars(object))",
    # Module objects behind the allowed modules
    "re_enum_sys": "import re\nprint('ESCAPED', re.enum.sys.modules)",
    "json_decoder_module": "import json\nprint('ESCAPED', json.decoder)",
    "from_json_import_decoder": "from json import decoder\nprint('ESCAPED', decoder)",
    "from_collections_import_abc": "from collections import abc\nprint('ESCAPED', abc)",
    "import_collections_abc": "import collections.abc\nprint('ESCAPED', collections.abc)",
    "random_os": "import random\nprint('ESCAPED', getattr(random, '_os'))",
    "functools_builtins": "import functools\nprint('ESCAPED', getattr(functools, '__builtins__'))",
    "function_globals_of_a_module_function": (
        "import re\nprint('ESCAPED', getattr(re.compile, '__glo' + 'bals__'))"),
    "builtin_self_is_the_module": "import math\nprint('ESCAPED', getattr(math.sqrt, '__self__'))",
    "textwrap_re": "import textwrap\nprint('ESCAPED', textwrap.re)",
    "statistics_sys": "import statistics\nprint('ESCAPED', statistics.sys)",
    "datetime_sys": "import datetime\nprint('ESCAPED', datetime.sys)",
    "class_mro_to_collections_abc": "import collections\nprint('ESCAPED', collections.UserDict.mro())",
    "relative_import": "from . import policy\nprint('ESCAPED', policy)",
    "module_view_internals": "import re\nprint('ESCAPED', getattr(re, '_module_name'), re.__dict__)",
    "module_view_reinitialised": (
        "import re\nclass Evil(type(re)):\n    pass\nEvil.__init__(re, 're', {'findall': 'pwned'})\n"
        "print('ESCAPED', re.findall)"),
    "module_view_init_via_type": "import re\ntype(re).__init__(re, 're', {})\nprint('ESCAPED')",
    # Imports of anything else
    **{f"import_{name}": f"import {name}\nprint('ESCAPED', {name})"
       for name in ("os", "subprocess", "socket", "ctypes", "importlib", "builtins", "posix",
                    "pickle", "marshal", "gc", "inspect", "types", "codecs", "pathlib", "shutil",
                    "threading", "multiprocessing", "asyncio", "concurrent.futures", "urllib.request",
                    "linecache", "abc", "weakref")},
    "dunder_import": "print('ESCAPED', __import__('os'))",
    "from_os_import": "from os import system\nprint('ESCAPED', system)",
    "import_star": "from re import *\nprint('ESCAPED')",
    # open / eval / exec / compile and friends
    "open_for_reading": "print('ESCAPED', open('/etc/hostname').read())",
    "open_for_writing": f"open({PROBE_PATH!r}, 'w').write('x')\nprint('ESCAPED')",
    "eval_call": "print('ESCAPED', eval('1 + 1'))",
    "eval_by_another_name": "e = eval\nprint('ESCAPED', e('().__class__'))",
    "exec_call": "exec('import os')\nprint('ESCAPED')",
    "compile_call": "print('ESCAPED', compile('1', 'x', 'exec'))",
    "globals_builtins": "print('ESCAPED', globals()['__builtins__'])",
    "locals_builtins_in_a_function": "def f():\n    return locals()['__builtins__']\nprint('ESCAPED', f())",
    "vars_name": "print('ESCAPED', vars()['__name__'])",
    "globals_write_rebinds_no_hook": (
        "globals()['_getattr_'] = lambda o, n: o\nprint('ESCAPED', getattr((), '__ba' + 'se__'))"),
    "locals_of_the_print_collector": (
        "def f():\n    print('x')\n    return locals()['_print']\nprint('ESCAPED', f())"),
    "vars_of_a_host_object": "import re\nprint('ESCAPED', vars(re.compile('x')))",
    "vars_of_a_host_function": "print('ESCAPED', vars(llm_query))",
    "help_call": "help(str)\nprint('ESCAPED')",
    "breakpoint_call": "breakpoint()\nprint('ESCAPED')",
    "input_call": "print('ESCAPED', input())",
    "memoryview_call": "print('ESCAPED', memoryview(b'x'))",
    "dir_of_a_host_function": "print('ESCAPED', dir(llm_query))",
    # Secrets in the environment
    "environ_via_proc": "print('ESCAPED', open('/proc/self/environ').read())",
    "parent_environ_via_proc": "print('ESCAPED', open('/proc/1/environ').read())",
    "environ_via_os": f"import os\nprint('ESCAPED', os.environ[{CANARY_VARIABLE!r}])",
    # getattr / setattr / hasattr with computed names, and writes to shared objects
    "getattr_class_concatenated": "print('ESCAPED', getattr(1, '__ba' + 'se__'))",
    "getattr_of_getattr_self": "print('ESCAPED', getattr(getattr, '__se' + 'lf__'))",
    "getattr_of_llm_query_globals": "print('ESCAPED', getattr(llm_query, '__globals__'))",
    "hasattr_as_an_oracle": (
        "if hasattr(lambda: 0, '__glo' + 'bals__'):\n    print('ESCAPED')\nelse:\n"
        "    raise RuntimeError('blocked')"),
    "getattr_name_that_is_not_a_str": (
        "class N(str):\n    pass\nprint('ESCAPED', getattr((), N('__class__')))"),
    "poison_a_module_function": "import json\njson.loads = print\nprint('ESCAPED')",
    "poison_with_setattr": "import re\nsetattr(re, 'findall', print)\nprint('ESCAPED')",
    "poison_a_host_class": "import collections\ncollections.Counter.most_common = None\nprint('ESCAPED')",
    "poison_with_augmented_assignment": "import re\nre.IGNORECASE |= 0\nprint('ESCAPED')",
    "delete_from_a_module": "import re\ndel re.findall\nprint('ESCAPED')",
    "write_to_the_str_type": "str.split = None\nprint('ESCAPED')",
    "annotated_dunder_attribute": "class A:\n    pass\na = A()\na.__class__: int = int\nprint('ESCAPED')",
    "augmented_dunder_attribute": "class A:\n    pass\na = A()\na.__dict__ += {}\nprint('ESCAPED')",
    "setattr_dunder_on_own_object": "class A:\n    pass\nsetattr(A(), '__class__', int)\nprint('ESCAPED')",
    # type(name, bases, dict), metaclasses, __init_subclass__
    "type_with_three_arguments": (
        "X = type('X', (), {'__getattribute__': lambda s, n: 1})\nprint('ESCAPED', X)"),
    "type_of_type": "T = type(type(1))\nprint('ESCAPED', T('X', (), {}))",
    "metaclass_of_an_enum": "import re\nM = type(re.RegexFlag)\nprint('ESCAPED', M('X', (), {}))",
    "metaclass_keyword": "class M(type):\n    pass\nclass X(metaclass=M):\n    pass\nprint('ESCAPED')",
    "metaclass_subclass_call": "class M(type):\n    pass\nprint('ESCAPED', M('A', (), {}))",
    "metaclass_dunder_call": (
        "class M(type):\n    def __call__(cls):\n        return 1\nprint('ESCAPED', M('A', (), {}))"),
    "init_subclass_hook": "class A:\n    def __init_subclass__(cls):\n        pass\nprint('ESCAPED')",
    "init_subclass_assignment": "class A:\n    __init_subclass__ = print\nprint('ESCAPED')",
    "getattribute_override": (
        "class A:\n    def __getattribute__(self, name):\n        return 1\nprint('ESCAPED')"),
    # Decorators, lambdas and code objects reaching globals
    "lambda_globals": "f = lambda: 0\nprint('ESCAPED', f.__globals__)",
    "lambda_globals_computed": "print('ESCAPED', getattr(lambda: 0, '__glob' + 'als__'))",
    "decorator_globals": (
        "def deco(fn):\n    return getattr(fn, '__globals__')\n"
        "@deco\ndef f():\n    pass\nprint('ESCAPED', f)"),
    "code_object": "print('ESCAPED', getattr(lambda: 0, '__code__'))",
    "function_type_constructor": "FunctionType = type(lambda: 0)\nprint('ESCAPED', FunctionType(None, {}))",
    "closure_cells": (
        "def f():\n    x = 1\n    return lambda: x\nprint('ESCAPED', getattr(f(), '__closure__'))"),
    # attrgetter-style indirection through allowed modules
    "partial_of_getattr": (
        "import functools\nget = functools.partial(getattr, ())\nprint('ESCAPED', get('__base__'))"),
    "map_of_getattr": "print('ESCAPED', list(map(getattr, [int], ['__base__'])))",
    "reduce_of_getattr": (
        "import functools\nprint('ESCAPED', functools.reduce(getattr, ['__class__', '__base__'], ()))"),
    "sorted_key_getattr": "print('ESCAPED', sorted([int], key=lambda o: getattr(o, '__base__')))",
    "regex_callback_getattr": (
        "import re\nprint('ESCAPED', re.sub('x', lambda m: str(getattr(m, '__reduce__')), 'x'))"),
    "json_object_hook_getattr": (
        "import json\nprint('ESCAPED', json.loads('{}', object_hook=lambda d: getattr(d, '__reduce__')))"),
    "namedtuple_dunder_field": (
        "import collections\nprint('ESCAPED', collections.namedtuple('P', ['__class__']))"),
    "update_wrapper_assigned": (
        "import functools\nclass A:\n    pass\n"
        "functools.update_wrapper(A(), len, assigned=('__self__',))\nprint('ESCAPED')"),
    "wraps_onto_a_host_function": (
        "import functools, re\nfunctools.wraps(print)(re.findall)\nprint('ESCAPED')"),
    "singledispatch_annotation_eval": (
        "import functools\n@functools.singledispatch\ndef f(x):\n    return 0\nprint('ESCAPED')"),
    "total_ordering_on_a_host_class": (
        "import functools, collections\nfunctools.total_ordering(collections.deque)\nprint('ESCAPED')"),
    # The context object's internals
    "context_internals": "print('ESCAPED', getattr(context, '_coverage'))",
    "context_class": (
        "if context.__class__ is not str or type(context) is not str:\n"
        "    print('ESCAPED', context.__class__)\n"
        "raise RuntimeError('blocked')"),
    "context_dict": "print('ESCAPED', getattr(context, '__dict__'))",
    "context_method_function": "print('ESCAPED', getattr(context.split, '__func__'))",
    # sys.modules by other paths
    "spec_and_loader": "import re\nprint('ESCAPED', getattr(re, '__spec__'), getattr(re, '__loader__'))",
    "module_name_global": "print('ESCAPED', __name__, __file__)",
    "builtin_method_self_of_random": "import random\nprint('ESCAPED', getattr(random.random, '__self__'))",
    # The constructs allowed for the Python models write (issue 11), each used against the guards
    "format_class_then_init_globals": "print('ESCAPED', '{0.__class__.__init__.__globals__}'.format(1))",
    "format_dict_of_a_host_object": "import re\nprint('ESCAPED', '{0.__dict__}'.format(re.compile('x')))",
    "readable_dunder_then_globals": "print('ESCAPED', getattr(len.__call__, '__self__'))",
    "class_of_a_module_view_writes": "import re\nre.__class__.findall = print\nprint('ESCAPED')",
    "dict_of_a_host_object": "import re\nprint('ESCAPED', re.compile('x').__dict__)",
    "dict_of_an_own_class": "class A:\n    pass\nprint('ESCAPED', A.__dict__)",
    "special_method_exit_gets_the_frame": (
        "class A:\n    def __enter__(self):\n        return self\n"
        "    def __exit__(self, kind, error, tb):\n        print('ESCAPED', getattr(tb, 'tb_' + 'frame'))\n"
        "with A():\n    1 / 0"),
    "special_method_exit_formats_the_frame": (
        "class A:\n    def __enter__(self):\n        return self\n"
        "    def __exit__(self, kind, error, tb):\n"
        "        print('ESCAPED', '{0.tb_frame.f_globals}'.format(tb))\n"
        "with A():\n    1 / 0"),
    "special_method_reduce_ex_for_copy": (
        "import copy\nclass A:\n    def __reduce_ex__(self, protocol):\n"
        "        return (print, ('ESCAPED',))\n"
        "copy.copy(A())"),
    "special_method_del": "class A:\n    def __del__(self):\n        print('ESCAPED')\nA()",
    "special_method_getattribute_in_a_function": (
        "def f():\n    class A:\n        def __getattribute__(self, name):\n            return 1\n"
        "    return A\nprint('ESCAPED', f())"),
    "match_class_keyword_frame": (
        "def g():\n    yield 1\nmatch g():\n    case object(gi_frame=frame):\n"
        "        print('ESCAPED', frame)"),
    "match_class_keyword_dunder": "match 1:\n    case object(__class__=c):\n        print('ESCAPED', c)",
    "match_class_keyword_exception_obj": (
        "try:\n    (1).nope\nexcept AttributeError as e:\n    match e:\n        case AttributeError(obj=o):\n"
        "            print('ESCAPED', o)"),
    "match_args_through_abc_register": (
        "import collections, typing\nP = collections.namedtuple('P', ['gi_frame'])\n"
        "class Q(P, typing.Generator):\n    pass\nQ.register(type((i for i in [])))\n"
        "match (i for i in [1]):\n    case Q(frame):\n        print('ESCAPED', frame)"),
    "match_class_register_keyword": (
        "import typing\nclass Q(typing.Generator):\n    pass\nmatch Q:\n    case type(register=r):\n"
        "        print('ESCAPED', r)"),
    "dataclass_field_named_like_an_internal": (
        "import dataclasses, typing\n@dataclasses.dataclass\nclass C(typing.Generator):\n"
        "    gi_frame: int = 0\nprint('ESCAPED', C)"),
    "dataclass_on_a_host_class": (
        "import dataclasses, collections\ndataclasses.dataclass(collections.Counter)\nprint('ESCAPED')"),
    "make_dataclass_namespace": (
        "import dataclasses\n"
        "print('ESCAPED', dataclasses.make_dataclass('X', ['a'], namespace={'__del__': print}))"),
    "dataclass_fields_reach_globals": (
        "import dataclasses\n@dataclasses.dataclass\nclass C:\n    x: int = 0\n"
        "f = dataclasses.fields(C)[0]\nprint('ESCAPED', getattr(C.__init__, '__glo' + 'bals__'))"),
    "type_hints_evaluate_strings": (
        "import typing\nclass C:\n    x: \"print('ESCAPED') or int\"\nprint(typing.get_type_hints(C))"),
    "forward_ref_code": (
        "import typing\nref = typing.get_args(typing.Optional['x'])[0]\n"
        "print('ESCAPED', getattr(ref, '__forward_' + 'code__'))"),
    "forward_ref_evaluate": "import typing\nprint('ESCAPED', typing.ForwardRef('1'))",
    "typing_final_writes_a_host_function": "import typing, re\ntyping.final(re.findall)\nprint('ESCAPED')",
    "enum_functional_dunder": (
        "import enum\nE = enum.Enum('E', [('__reduce_ex__', lambda s, p: (print, ('x',))), ('A', 1)])\n"
        "print('ESCAPED', E)"),
    "enum_functional_dunder_mapping": "import enum\nprint('ESCAPED', enum.Enum('E', {'__del__': print}))",
    "enum_metaclass": "import enum\nprint('ESCAPED', enum.EnumType)",
    "enum_metaclass_via_type": "import enum\nprint('ESCAPED', type(enum.Enum)('X', (), {}))",
    "operator_attrgetter_dunder": (
        "import operator\nprint('ESCAPED', operator.attrgetter('__globals__')(len))"),
    "operator_attrgetter_dotted": (
        "import operator\nprint('ESCAPED', operator.attrgetter('__class__.__base__')(1))"),
    "operator_attrgetter_generator_frame": (
        "import operator\nprint('ESCAPED', operator.attrgetter('gi_frame')((i for i in [1])))"),
    "operator_methodcaller_reduce": (
        "import operator\nprint('ESCAPED', operator.methodcaller('__reduce_ex__', 2)(context))"),
    "operator_setitem_on_a_host_object": (
        "import operator, collections\nu = collections.UserDict()\noperator.setitem(u, 'a', 1)\n"
        "print('ESCAPED')"),
    "copy_of_a_generator": "import copy\nprint('ESCAPED', copy.copy((i for i in [1])))",
    "sys_modules": "import sys\nprint('ESCAPED', sys.modules)",
    "sys_getframe": "import sys\nprint('ESCAPED', getattr(sys, '_get' + 'frame')())",
    "sys_exc_info_traceback": (
        "import sys\ntry:\n    1 / 0\nexcept Exception:\n    print('ESCAPED', sys.exc_info())"),
    "sys_stdout_internals": "import sys\nprint('ESCAPED', getattr(sys.stdout, '_out' + 'put'))",
    "sys_setrecursionlimit": "import sys\nsys.setrecursionlimit(10**6)\nprint('ESCAPED')",
    "io_open": "import io\nprint('ESCAPED', io.open('/etc/hostname').read())",
    "io_fileio": "import io\nprint('ESCAPED', io.FileIO('/etc/hostname').read())",
    "traceback_walk_tb": (
        "import traceback\ntry:\n    1 / 0\nexcept Exception as e:\n    print('ESCAPED', traceback.walk_tb)"),
    "traceback_exception_object": "import traceback\nprint('ESCAPED', traceback.TracebackException)",
    "traceback_format_names_no_host_path": (
        "import traceback, json\ntry:\n    json.loads('{')\nexcept Exception:\n"
        "    text = traceback.format_exc()\n"
        "    if 'json' in text.split('\\n')[1]:\n        print('ESCAPED', text)\n    raise"),
    "time_sleep_past_the_limits": "import time\ntime.sleep(10**6)\nprint('ESCAPED')",
    "time_set_the_clock": "import time\ntime.clock_settime(0, 0)\nprint('ESCAPED')",
    "nonlocal_hook_name": (
        "def f():\n    _getattr_ = 1\n    def g():\n        nonlocal _getattr_\n        _getattr_ = 2\n"
        "print('ESCAPED')"),
    "dunder_name_rebound": "__name__ = 'x'\nprint('ESCAPED')",
    "hashlib_module_self": "import hashlib\nprint('ESCAPED', getattr(hashlib.md5, '__se' + 'lf__'))",
    "csv_module_behind_reader": "import csv\nprint('ESCAPED', csv.sys)",
}
