"""Ordinary Python in the sandbox: language features, persistence, the allowed modules, the RLM protocol
functions (FINAL, FINAL_VAR, SHOW_VARS, llm_query, ...), print, output truncation and coverage.

Every test runs code in real worker processes of one pool (started once for the module)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from sandbox import ExecResult, FinalAnswer, PoolLimits, Prompt, SandboxLimits, SandboxPool, SandboxSession

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_OUTPUT = 2000
NEEDLE_AT = 60_000
CONTEXT = "a" * NEEDLE_AT + "needle" + "b" * (100_000 - NEEDLE_AT - 6)  # 100,000 characters


class FakeHandler:
    """Answers sub-calls from their text and records them."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    def prompt_refusals(self, chars: list[int], model: str | None) -> list[str | None]:
        return [None] * len(chars)

    async def llm_query(self, prompts: list[Prompt], model: str | None) -> list[str]:
        texts = [await prompt.text for prompt in prompts]
        self.calls.append(("llm", texts, model))
        if self.fail:
            raise RuntimeError("handler bug")
        return [f"<{text} via {model}>" for text in texts]

    async def rlm_query(self, prompt: str, context: Any) -> str:
        self.calls.append(("rlm", prompt, context))
        return f"<rlm {prompt} on {context!r}>"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    pool = SandboxPool(SandboxLimits(cpu_s_per_block=5, max_output_chars=MAX_OUTPUT),
                       PoolLimits(warm_workers=1))
    await pool.start()
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(pool: SandboxPool) -> AsyncIterator[SandboxSession]:
    """One session for the language tests (each uses its own names)."""
    session = await pool.session(CONTEXT)
    yield session
    await session.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(pool: SandboxPool) -> AsyncIterator[SandboxSession]:
    session = await pool.session(CONTEXT)
    yield session
    await session.close()


async def run(session: SandboxSession, code: str, handler: FakeHandler | None = None) -> ExecResult:
    return await session.execute(code, handler or FakeHandler())


async def output_of(session: SandboxSession, code: str, handler: FakeHandler | None = None) -> str:
    result = await run(session, code, handler)
    assert result.outcome == "ok", result.output
    return result.output


def code(*lines: str) -> str:
    return "\n".join(lines)


LANGUAGE = {
    "recursion": (code("def fact(n):", "    return 1 if n <= 1 else n * fact(n - 1)", "print(fact(10))"),
                  "3628800\n"),
    "closures_defaults_varargs": (code(
        "def make_adder(k):",
        "    def add(x, y=1, *rest, **named):",
        "        return x + y + k + sum(rest) + sum(named.values())",
        "    return add",
        "add = make_adder(100)",
        "args = [1, 2]",
        "kw = {'z': 3}",
        "print(add(1), add(1, 2), add(1, 2, 3, 4), add(1, z=5), add(*args, **kw))"),
        "102 103 110 107 106\n"),
    "classes_inheritance_super": (code(
        "class Animal:",
        "    kind = 'animal'",
        "    def __init__(self, name):",
        "        self.name = name",
        "        self.calls = 0",
        "    def speak(self):",
        "        self.calls += 1",
        "        return f'{self.name} makes a sound'",
        "class Dog(Animal):",
        "    def __init__(self, name, breed):",
        "        super().__init__(name)",
        "        self.breed = breed",
        "    def speak(self):",
        "        return super().speak() + ' (woof)'",
        "class Puppy(Dog):",
        "    def __init__(self, name):",
        "        Dog.__init__(self, name, 'mixed')",
        "dog = Dog('Rex', 'lab')",
        "dog.age = 3",
        "print(dog.speak(), dog.calls, dog.breed, dog.age, isinstance(dog, Animal), Dog.kind)",
        "print(Puppy('Bit').breed)"),
        "Rex makes a sound (woof) 1 lab 3 True animal\nmixed\n"),
    "comprehensions_generators": (code(
        "squares = [i * i for i in range(6) if i % 2 == 0]",
        "pairs = {k: v for k, v in zip('abc', range(3))}",
        "letters = {c for c in 'banana'}",
        "def gen(n):",
        "    for i in range(n):",
        "        yield i * 10",
        "print(squares, pairs, sorted(letters), list(gen(3)), sum(x for x in range(5)))"),
        "[0, 4, 16] {'a': 0, 'b': 1, 'c': 2} ['a', 'b', 'n'] [0, 10, 20] 10\n"),
    "fstrings_slicing_builtins": (code(
        "words = ['pear', 'fig', 'banana']",
        "print(f\"{len(words):03d} {words[0]!r} {3.14159:.2f} {'x':>3}|\")",
        "print(sorted(words, key=len), sorted(words, reverse=True)[:2], 'hello'[1:4], 'hello'[::-1])",
        "print(list(enumerate(words, 1))[1], list(map(str.upper, words)))",
        "print(list(filter(lambda w: 'a' in w, words)), max(words, key=len), min([3, 1]), any([0, 1]))",
        "print(all([]), abs(-2), round(2.567, 1), divmod(7, 2))"),
        "003 'pear' 3.14   x|\n['fig', 'pear', 'banana'] ['pear', 'fig'] ell olleh\n"
        "(2, 'fig') ['PEAR', 'FIG', 'BANANA']\n['pear', 'banana'] banana 1 True\nTrue 2 2.6 (3, 1)\n"),
    "dict_list_set_methods": (code(
        "d = {'a': 1}", "d.update(b=2)", "d.setdefault('c', 3)", "d.pop('a')",
        "l = [3, 1, 2]", "l.append(4)", "l.extend([0])", "l.sort()", "l.reverse()", "l.insert(0, 9)",
        "l.remove(9)",
        "s = {1, 2}", "s.add(3)", "s.discard(1)", "s |= {7}",
        "print(d, l, sorted(s), list(d.items()), d.get('zz', 'none'), l.index(3), l.count(0))"),
        "{'b': 2, 'c': 3} [4, 3, 2, 1, 0] [2, 3, 7] [('b', 2), ('c', 3)] none 1 1\n"),
    "try_except_finally": (code(
        "def risky(x):",
        "    try:",
        "        return 10 / x",
        "    except ZeroDivisionError as e:",
        "        return 'caught ' + repr(e)",
        "    finally:",
        "        print('finally', x)",
        "print(risky(2), risky(0))",
        "try:",
        "    raise ValueError('boom')",
        "except (KeyError, ValueError) as error:",
        "    print('handled', error)",
        "else:",
        "    print('not reached')"),
        "finally 2\nfinally 0\n5.0 caught ZeroDivisionError('division by zero')\nhandled boom\n"),
    "augmented_assignment": (code(
        "n = 1", "n += 2", "n *= 3", "n -= 1", "n //= 2", "text = 'a'", "text += 'b'",
        "counts = {}",
        "for w in 'a b a c a'.split():",
        "    counts[w] = counts.get(w, 0)",
        "    counts[w] += 1",
        "class Box:",
        "    def __init__(self):",
        "        self.total = 0",
        "    def add(self, v):",
        "        self.total += v",
        "box = Box()", "box.add(5)", "box.add(6)",
        "items = [1, [2]]", "items[0] += 10", "items[1] += [3]",
        "print(n, text, counts, box.total, items)"),
        "4 ab {'a': 3, 'b': 1, 'c': 1} 11 [11, [2, 3]]\n"),
    "unpacking": (code(
        "a, (b, c), *rest = 1, (2, 3), 4, 5",
        "for i, (x, y) in enumerate([(7, 8)]):",
        "    print(i, x, y)",
        "a, b = b, a",
        "first, *middle, last = 'wxyz'",
        "print(a, b, c, rest, first, middle, last)"),
        "0 7 8\n2 1 3 [4, 5] w ['x', 'y'] z\n"),
    "global_lambda_while": (code(
        "counter = 0",
        "def bump():",
        "    global counter",
        "    counter += 1",
        "bump()", "bump()",
        "i = 0",
        "while True:",
        "    i += 1",
        "    if i < 3:",
        "        continue",
        "    break",
        "assert i == 3",
        "scratch = [1]",
        "del scratch[0]",
        "print(counter, (lambda x, y=2: x * y)(4), i, scratch)"),
        "2 8 3 []\n"),
    "annotations": (code(
        "total: int = 5", "names: list[str] = []", "declared: float",
        "def typed(x: int) -> str:", "    return str(x)",
        "print(total, names, typed(3))"),
        "5 [] 3\n"),
    "types": (code(
        "print(isinstance(context, str), type(context) is str, type(1) is int, isinstance(int, type))",
        "print(type(int) is type, type('x')('y'), issubclass(bool, int))"),
        "True True True True\nTrue y True\n"),
    "context_str_operations": (code(
        "import json",
        "print(len(context), context.count('needle'), 'needle' in context, context.find('needle'))",
        "print(context[-3:], len(context.split('needle')), json.loads(json.dumps({'c': context[:2]}))['c'])"),
        f"100000 1 True {NEEDLE_AT}\nbbb 2 aa\n"),
}


@pytest.mark.parametrize("case", LANGUAGE)
async def test_ordinary_python_works(shared: SandboxSession, case: str) -> None:
    code, expected = LANGUAGE[case]
    assert await output_of(shared, code) == expected


async def test_variables_functions_and_classes_persist_across_blocks(fresh: SandboxSession) -> None:
    await output_of(fresh, code("kept = [1]", "total = 0", "def helper(x):", "    return x + 1",
                                "def add(n):", "    global total", "    total += n",
                                "class Acc:", "    items = []", "import re"))
    await output_of(fresh, "kept.append(helper(1))\nAcc.items.append('z')\nadd(5)")
    await output_of(fresh, "add(2)")
    output = await output_of(fresh, "print(kept, Acc.items, total, re.sub('a', 'b', 'aa'))")
    assert output == "[1, 2] ['z'] 7 bb\n"


IMPORTS = {
    "re": (code("import re",
                "print(re.findall(r'\\d+', 'a1b22c333'), re.match(r'(\\w)(\\d)', 'x9').group(2))"),
           "['1', '22', '333'] 9\n"),
    "json": (code("import json", "print(json.loads('{\"a\": [1, 2]}')['a'][1], json.dumps({'b': 1}))"),
             '2 {"b": 1}\n'),
    "collections": (code(
        "from collections import Counter, defaultdict, deque, namedtuple",
        "dd = defaultdict(list)", "dd['x'].append(1)", "q = deque([1, 2])", "q.appendleft(0)",
        "P = namedtuple('P', 'x y')",
        "print(Counter('abracadabra').most_common(1), dict(dd), list(q), P(1, 2).y)"),
        "[('a', 5)] {'x': [1]} [0, 1, 2] 2\n"),
    "datetime": (code(
        "import datetime",
        "print(datetime.datetime(2024, 1, 2).strftime('%Y/%m/%d %A'))",
        "print(datetime.datetime.strptime('2024-03-04', '%Y-%m-%d').month)",
        "print(datetime.date(2024, 1, 1) + datetime.timedelta(days=31))"),
        "2024/01/02 Tuesday\n3\n2024-02-01\n"),
    "math_statistics": (code(
        "import math, statistics",
        "print(math.sqrt(16), math.pi > 3, statistics.mean([1, 2, 3, 4]), statistics.median([3, 1, 2]))"),
        "4.0 True 2.5 2\n"),
    "itertools": (code(
        "import itertools as it",
        "print(list(it.combinations('abc', 2)), list(it.islice(it.count(), 3)), list(it.chain([1], [2])))"),
        "[('a', 'b'), ('a', 'c'), ('b', 'c')] [0, 1, 2] [1, 2]\n"),
    "functools": (code(
        "from functools import reduce, partial, lru_cache, wraps",
        "@lru_cache(maxsize=None)",
        "def fib(n):",
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)",
        "def deco(f):",
        "    @wraps(f)",
        "    def inner(*a):",
        "        return f(*a) * 2",
        "    return inner",
        "@deco",
        "def one():",
        "    return 1",
        "print(reduce(lambda a, b: a * b, [1, 2, 3, 4]), partial(pow, 2)(10), fib(30), one())"),
        "24 1024 832040 2\n"),
    "textwrap": (code(
        "import textwrap",
        "print(textwrap.wrap('the quick brown fox jumps', width=10))",
        "print(textwrap.shorten('a b c d e f', width=7))"),
        "['the quick', 'brown fox', 'jumps']\na [...]\n"),
    "random": (code(
        "import random",
        "print(random.Random(1).random(), 0 <= random.random() < 1, random.Random(2).choice('xyz'))"),
        "0.13436424411240122 True x\n"),
    "heapq_bisect": (code(
        "import heapq, bisect", "h = [5, 1, 3]", "heapq.heapify(h)",
        "print(heapq.heappop(h), heapq.nsmallest(2, [4, 2, 9]), bisect.bisect_left([1, 3, 5], 4))"),
        "1 [2, 4] 2\n"),
    "difflib": (code(
        "import difflib",
        "print(round(difflib.SequenceMatcher(None, 'abcd', 'abce').ratio(), 2),",
        "      difflib.get_close_matches('appel', ['apple', 'peach']))"),
        "0.75 ['apple']\n"),
    "unicodedata": (code("import unicodedata",
                         "print(unicodedata.name('é'), len(unicodedata.normalize('NFD', 'é')))"),
                    "LATIN SMALL LETTER E WITH ACUTE 2\n"),
    "string": (code(
        "import string",
        "print(string.ascii_letters[:5], string.digits,",
        "      string.Template('$who likes $what').substitute(who='tim', what='pie'))"),
        "abcde 0123456789 tim likes pie\n"),
    "aliases_and_from": (code(
        "import re as regex", "from json import dumps as to_json",
        "print(regex.sub('a', 'b', 'aa'), to_json([1]))"),
        "bb [1]\n"),
}


@pytest.mark.parametrize("case", IMPORTS)
async def test_allowed_modules_work(shared: SandboxSession, case: str) -> None:
    code, expected = IMPORTS[case]
    assert await output_of(shared, code) == expected


async def test_another_module_is_an_import_error_naming_the_allowed_ones(shared: SandboxSession) -> None:
    result = await run(shared, "import numpy")
    assert result.outcome == "error"
    assert "ImportError" in result.output and "re, statistics" in result.output


async def test_final_records_str_of_the_value_and_the_last_call_wins(fresh: SandboxSession) -> None:
    result = await run(fresh, "FINAL(41)\nFINAL(42)\nprint('still running')")
    assert result.outcome == "ok"
    assert result.final == FinalAnswer(text="42", variable=None)
    assert result.output == "still running\n"
    assert (await run(fresh, "x = 1")).final is None  # a block's answer does not carry over


async def test_final_var_answers_with_a_variable(fresh: SandboxSession) -> None:
    result = await run(fresh, "answer = {'k': [1, 2]}\nFINAL_VAR('answer')")
    assert result.final == FinalAnswer(text="{'k': [1, 2]}", variable="answer")
    assert await fresh.resolve_variable("answer") == ("{'k': [1, 2]}", None)
    assert await fresh.resolve_variable("missing") == (None, None)
    assert await fresh.resolve_variable("_print") == (None, None)


async def test_final_var_of_a_missing_variable_is_an_error_not_an_answer(fresh: SandboxSession) -> None:
    result = await run(fresh, "FINAL_VAR('missing')")
    assert result.outcome == "error" and result.final is None
    assert "no variable named 'missing'; use FINAL(value)" in result.output
    result = await run(fresh, "FINAL_VAR(42)")
    assert result.outcome == "error" and result.final is None
    assert "TypeError" in result.output and "FINAL_VAR('answer')" in result.output


async def test_final_before_an_error_is_kept(fresh: SandboxSession) -> None:
    result = await run(fresh, "FINAL('early')\n1 / 0")
    assert result.outcome == "error" and result.final == FinalAnswer("early", None)


async def test_show_vars_lists_variables_with_types_not_injected_functions(fresh: SandboxSession) -> None:
    output = await output_of(fresh, code("import json", "count = 3", "names = ['a', 'b']", "def helper():",
                                         "    pass", "SHOW_VARS()"))
    assert "context: str (100,000 chars)" in output
    assert "count: int" in output and "names: list (2 items)" in output
    assert "helper: function" in output and "json: module" in output
    for injected in ("llm_query", "FINAL", "SHOW_VARS", "_print", "__builtins__"):
        assert injected not in output


async def test_print_works_in_functions_methods_lambdas_and_resumed_generators(fresh: SandboxSession) -> None:
    code = ("def shout(x):\n    print('in function', x)\n"
            "class Speaker:\n    def say(self):\n        print('in method')\n"
            "shout(1)\nSpeaker().say()\nlist(map(lambda v: print('in lambda', v), [2]))\n"
            "def ticks():\n    while True:\n        print('tick')\n        yield\n"
            "clock = ticks()\nnext(clock)\nprint(1, 2, sep='-', end='!\\n')")
    assert await output_of(fresh, code) == "in function 1\nin method\nin lambda 2\ntick\n1-2!\n"
    assert await output_of(fresh, "next(clock)\nshout('again')") == "tick\nin function again\n"


async def test_long_output_is_cut_with_a_marker_saying_how_much(fresh: SandboxSession) -> None:
    output = await output_of(fresh, "print('x' * 5000)")
    assert output.startswith("x" * MAX_OUTPUT)
    assert output.endswith("\n... [3,001 more characters cut]\n")
    result = await run(fresh, "for i in range(3000):\n    print(i)\nundefined_name")
    assert result.outcome == "error" and "more characters cut" in result.output
    assert result.output.endswith("NameError: name 'undefined_name' is not defined")
    assert len(result.output) <= MAX_OUTPUT + 100


async def test_errors_show_a_short_traceback_of_the_block_only(fresh: SandboxSession) -> None:
    await output_of(fresh, "def inner(x):\n    return 1 / x")
    result = await run(fresh, "print('before')\ninner(0)")
    assert result.outcome == "error"
    assert result.output.startswith("before\nTraceback (most recent call last):\n")
    assert 'File "<block 2>", line 2\n    inner(0)' in result.output
    assert 'File "<block 1>", line 2, in inner\n    return 1 / x' in result.output
    assert result.output.endswith("ZeroDivisionError: division by zero")
    assert "/" + "sandbox" not in result.output and ".py" not in result.output


async def test_syntax_and_policy_errors_are_reported_before_running(fresh: SandboxSession) -> None:
    result = await run(fresh, "print('not run')\nx = (")
    assert result.outcome == "error" and "not run" not in result.output and "SyntaxError" in result.output
    result = await run(fresh, "print('not run')\nx = ().__base__")
    assert result.outcome == "error" and "not run" not in result.output and '"__base__"' in result.output


COVERAGE = {
    "slice_of_a_hundredth": ("part = context[:1000]", 0.01),
    "two_slices": ("part = context[:1000]\nother = context[50_000:51_000]\nagain = context[500:1500]", 0.025),
    "regex_reads_everything": ("import re\nhits = re.findall('needle', context)", 1.0),
    "compiled_pattern_reads_everything": ("import re\nhit = re.compile('needle').search(context)", 1.0),
    "split_reads_everything": ("words = context.split()", 1.0),
    "iteration_reads_everything": ("n = sum(1 for ch in context if ch == 'n')", 1.0),
    "find_reads_up_to_the_match": ("where = context.find('needle')", (NEEDLE_AT + 6) / 100_000),
    "len_reads_nothing": ("n = len(context)", 0.0),
    "print_reads_what_is_shown": ("print(context)", MAX_OUTPUT / 100_000),
    "llm_query_of_a_slice": ("answer = llm_query(context[-2000:])", 0.02),
}


@pytest.mark.parametrize("case", COVERAGE)
async def test_coverage_counts_the_characters_read(fresh: SandboxSession, case: str) -> None:
    code, expected = COVERAGE[case]
    result = await run(fresh, code)
    assert result.outcome == "ok", result.output
    assert result.coverage == pytest.approx(expected, abs=0.0005)
    assert fresh.coverage == result.coverage


async def test_coverage_of_a_list_context_counts_message_contents(pool: SandboxPool) -> None:
    messages = [{"role": "system", "content": "s" * 1000}, {"role": "user", "content": "u" * 3000}]
    session = await pool.session(messages)
    try:
        result = await run(session, code(
            "print(context[1]['role'], len(context), isinstance(context[1]['content'], str))",
            "part = context[1]['content'][:400]"))
        assert result.output == "user 2 True\n"
        assert result.coverage == pytest.approx(0.1)
        assert (await run(session, "import json\ntext = json.dumps(context)")).coverage == 1.0
    finally:
        await session.close()


async def test_llm_query_crosses_to_the_handler(fresh: SandboxSession) -> None:
    handler = FakeHandler()
    output = await output_of(fresh, "a = llm_query('hello')\nb = llm_query('hi', model='small')\n"
                                    "print(a, b, type(a) is str)", handler)
    assert output == "<hello via None> <hi via small> True\n"
    assert handler.calls == [("llm", ["hello"], None), ("llm", ["hi"], "small")]


async def test_llm_query_batched_is_one_round_trip_in_order_with_item_errors(fresh: SandboxSession) -> None:
    handler = FakeHandler()
    output = await output_of(fresh, code("answers = llm_query_batched(['one', 2, 'three'], model='m')",
                                         "print(type(answers) is list, len(answers))",
                                         "for a in answers:", "    print(a)"), handler)
    assert output == "True 3\n<one via m>\nError: the prompt must be a str, not int\n<three via m>\n"
    assert handler.calls == [("llm", ["one", "three"], "m")]


class EarlyAsker(FakeHandler):
    """Notes how many of a batch's prompts were still to come from the worker when it was asked."""

    unread_when_asked = -1

    async def llm_query(self, prompts: list[Prompt], model: str | None) -> list[str]:
        self.unread_when_asked = sum(not prompt.text.done() for prompt in prompts)
        return [str(len(await prompt.text)) for prompt in prompts]


async def test_a_batch_is_asked_for_while_its_prompts_are_still_arriving(fresh: SandboxSession) -> None:
    """The models get a batch at once, each prompt as it arrives: the first calls go out while the worker
    still writes the rest (3 x 2 MB here, more than the pipe and the reader hold)."""
    handler = EarlyAsker()
    output = await output_of(fresh, "print(llm_query_batched([c * 2_000_000 for c in 'abc']))", handler)
    assert output == "['2000000', '2000000', '2000000']\n"
    assert handler.unread_when_asked >= 1


async def test_bad_llm_query_arguments_come_back_as_error_strings(fresh: SandboxSession) -> None:
    handler = FakeHandler()
    output = await output_of(fresh, "print(llm_query(123))\nprint(llm_query('x', model=5))\n"
                                    "print(llm_query_batched([]))", handler)
    assert output == ("Error: the prompt must be a str, not int\n"
                      "Error: model must be None or a model name (a non-empty str)\n[]\n")
    assert handler.calls == []
    result = await run(fresh, "llm_query_batched('not a list')", handler)
    assert result.outcome == "error" and "expects a list of str prompts" in result.output


async def test_handler_failures_become_error_strings(fresh: SandboxSession) -> None:
    output = await output_of(fresh, "print(llm_query('x'))", FakeHandler(fail=True))
    assert output.startswith("Error:")


async def test_rlm_query_sends_a_text_messages_or_json_text_as_context(fresh: SandboxSession) -> None:
    handler = FakeHandler()
    blocks = code("print(rlm_query('sub', {'docs': [context[:3], 1, None]}))",
                  "print(rlm_query('sub', [{'role': 'user', 'content': context[:2]}]))",
                  "print(rlm_query('sub', context[:4]))", "print(rlm_query('sub'))",
                  "print(rlm_query('sub', object()))", "print(rlm_query('sub', 10**30))")
    output = await output_of(fresh, blocks, handler)
    lines = output.splitlines()
    assert lines[0] == """<rlm sub on '{"docs":["aaa",1,null]}'>"""
    assert lines[1] == "<rlm sub on [{'role': 'user', 'content': 'aa'}]>"
    assert lines[2:4] == ["<rlm sub on 'aaaa'>", "<rlm sub on None>"]
    assert lines[4].startswith("Error: rlm_query context must be JSON data")
    assert lines[5].startswith("Error: rlm_query context must be JSON data")
    assert [call[2] for call in handler.calls] == [
        '{"docs":["aaa",1,null]}', [{"role": "user", "content": "aa"}], "aaaa", None]


async def test_blocks_of_one_session_run_in_order(fresh: SandboxSession) -> None:
    await output_of(fresh, "log = []")
    await asyncio.gather(*(run(fresh, f"log.append({i})") for i in range(5)))
    assert await output_of(fresh, "print(log)") == "[0, 1, 2, 3, 4]\n"
