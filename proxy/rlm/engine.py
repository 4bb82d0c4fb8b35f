"""The RLM loop: a root model writes code against `context` in a sandboxed REPL until it answers.

Free of HTTP: it takes messages, limits and a `ModelCaller`, and yields events. The caller's exceptions
from root calls propagate (the HTTP layer maps them); sub-call failures become "Error: ..." strings for
the model's code, as the protocol promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.cache import CachePolicy
from proxy.config import RLMSettings
from proxy.rlm import prompts
from proxy.rlm.budget import Budget, Limit, RunLimits, SharedBudget
from proxy.rlm.events import (
    BlockExecuted,
    BlockStarted,
    Event,
    IterationStarted,
    ModelCall,
    RootReplied,
    RunFinished,
    RunStats,
    SubcallsDispatched,
    SubcallsFinished,
)
from proxy.rlm.parsing import BlockWatcher, answer_without_protocol, parse_reply
from sandbox import ExecResult, NestedContext, Prompt, SandboxPool, SandboxSession

# Completion tokens assumed when reserving budget for a sub-call whose answer is not known yet.
RESERVED_COMPLETION_TOKENS = 500
# Root-call sampling parameters taken from the client's request; the rest would change the protocol.
ROOT_PARAMS = ("temperature", "top_p", "seed")


class FinalAnswerTimeout(Exception):
    """A limit stopped the run, and the root model did not give its final answer in time either."""

    def __init__(self, limit: Limit, timeout_s: float) -> None:
        super().__init__(f"The run stopped at its limit ({limit}), and the root model did not give a final "
                         f"answer within {timeout_s:g} s after that (rlm.final_answer_timeout_s).")


@dataclass(frozen=True)
class ModelReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool = False  # served from the cache: tokens and cost were consumed before, not now
    # Calls of the client's tools, in Chat Completions form (only root calls offer tools).
    tool_calls: tuple[dict[str, Any], ...] = ()
    cache_key: str = ""  # the call's key in the cache, "" when it did not go through the cache

    def as_call(self, model: str, prompt_chars: int, duration_s: float, prompt: str = "") -> ModelCall:
        return ModelCall(model=model, prompt_chars=prompt_chars, text=self.text, error=None,
                         prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                         cost_usd=self.cost_usd, cached=self.cached, duration_s=duration_s,
                         cache_key=self.cache_key, prompt=prompt, started_at=time.time() - duration_s)


@dataclass(frozen=True)
class ClientTools:
    """The client's function tools, offered to the root model at the top level of a run: a reply that
    calls them ends the run, and the client runs the calls."""

    tools: tuple[dict[str, Any], ...]  # Chat Completions `tools` entries
    choice: str | dict[str, Any] | None = None  # `tool_choice`: absent, "auto" or allowed_tools in auto mode
    parallel: bool | None = None  # `parallel_tool_calls`

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(str(tool["function"].get("name")) for tool in self.tools)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"tools": list(self.tools)}
        if self.choice is not None:
            params["tool_choice"] = self.choice
        if self.parallel is not None:
            params["parallel_tool_calls"] = self.parallel
        return params


@dataclass(frozen=True)
class _Answer:
    """How a run at one depth ended: a text, or (top level only) calls of the client's tools."""

    text: str
    tool_calls: tuple[dict[str, Any], ...] = ()


TextSink = Callable[[str], None]  # takes a reply's text piece by piece, as it streams in


class ModelCaller(Protocol):
    async def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any],
                       cache: CachePolicy, on_text: TextSink | None = None) -> ModelReply:
        """The reply; with `on_text`, its text is also given there as it arrives (all at once when the
        call is not streamed, e.g. served from the cache)."""

    def prompt_limit_chars(self, model: str) -> int | None:
        """What one prompt to this model may hold, or None when its window is unknown."""

    def estimate_cost_usd(self, model: str, prompt_chars: int, completion_tokens: int) -> float: ...

    def unknown_model(self, model: str) -> str | None:
        """An error message when `model` cannot be used for sub-calls, else None."""


@dataclass(frozen=True)
class RunRequest:
    messages: list[dict[str, Any]]
    root_model: str
    sub_model: str
    limits: RunLimits
    cache: CachePolicy
    root_params: dict[str, Any] = field(default_factory=dict)
    tools: ClientTools | None = None  # None: the root model answers in text only
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    shared_budget: SharedBudget | None = None  # the caller's budget, which other runs spend from too


@dataclass
class _Run:
    """State shared by a run and its nested runs."""

    request: RunRequest
    budget: Budget
    stats: RunStats
    events: _Emitter
    subcalls: asyncio.Semaphore

    def emit(self, event: Event) -> None:
        self.events.emit(event)


class RLMEngine:
    def __init__(self, caller: ModelCaller, sandbox: SandboxPool, settings: RLMSettings) -> None:
        self._caller = caller
        self._sandbox = sandbox
        self._settings = settings

    async def run(self, request: RunRequest) -> AsyncIterator[Event]:
        """Events until (and including) `RunFinished`. Closing the iterator early cancels the run: the
        worker is killed and pending sub-calls are cancelled."""
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        run = _Run(request, Budget(request.limits, request.shared_budget), RunStats(),
                   _Emitter(queue.put_nowait), asyncio.Semaphore(self._settings.subcall_concurrency))

        async def drive() -> None:
            try:
                queue.put_nowait(await self._top_level(run))
            except Exception as error:
                queue.put_nowait(error)

        task = asyncio.create_task(drive())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, RunFinished):
                    return
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _top_level(self, run: _Run) -> RunFinished:
        started = time.monotonic()
        run_input = prompts.build_input(run.request.messages)
        answer, stopped = await self._solve(run, run_input, depth=1,
                                            deadline=asyncio.get_running_loop().time()
                                            + run.request.limits.timeout_s)
        run.stats.duration_s = time.monotonic() - started
        run.stats.subcalls = run.budget.subcalls
        run.stats.cost_usd = run.budget.cost_usd
        finish_reason = "tool_calls" if answer.tool_calls else "stop" if stopped is None else "length"
        return RunFinished(answer=answer.text, finish_reason=finish_reason, stopped=stopped, stats=run.stats,
                           tool_calls=answer.tool_calls)

    async def _solve(self, run: _Run, run_input: prompts.RunInput, depth: int,
                     deadline: float | None) -> tuple[_Answer, Limit | None]:
        """One RLM run at `depth` on its own worker. Only the top level owns the deadline: a timeout
        unwinds nested runs to the top, which asks for the final answer."""
        limits = run.request.limits
        sub_chars = self._caller.prompt_limit_chars(run.request.sub_model) if limits.max_subcalls else None
        tools = run.request.tools if depth == 1 else None  # a nested run answers the code, not the client
        settings = prompts.PromptSettings(
            max_iterations=limits.max_iterations, max_output_chars=self._settings.max_output_chars,
            subcalls=limits.max_subcalls > 0, nested_rlm=limits.max_subcalls > 0 and depth < limits.max_depth,
            sub_prompt_chars=sub_chars, client_tools=tools.names if tools else ())
        conversation = _Conversation(
            prompts.system_prompt(settings, self._settings.system_prompt),
            prompts.context_card(run_input, sub_chars),
            self._caller.prompt_limit_chars(run.request.root_model))
        # The context loads into a worker while the root model writes its first reply (which needs none).
        session = _LoadingSession(self._sandbox.session(run_input.context))
        try:
            stopped: Limit | None
            try:
                async with asyncio.timeout_at(deadline):
                    answer = await self._iterate(run, conversation, session, run_input, depth, tools)
                if answer is not None:
                    return answer, None
                stopped = run.budget.exhausted or "max_iterations"
            except TimeoutError:
                stopped = "timeout_s"
            try:
                async with asyncio.timeout(self._settings.final_answer_timeout_s):
                    final = await self._final_request(run, conversation, session, stopped, depth)
                    return _Answer(final), stopped
            except TimeoutError:
                raise FinalAnswerTimeout(stopped, self._settings.final_answer_timeout_s) from None
        finally:
            await session.close()

    async def _iterate(self, run: _Run, conversation: _Conversation, session: _LoadingSession,
                       run_input: prompts.RunInput, depth: int, tools: ClientTools | None) -> _Answer | None:
        """The answer, or None when a limit stopped the loop first."""
        limits = run.request.limits
        handler = _SubcallHandler(self, self._caller, run, depth)
        questioned = run_input.total_chars <= 2 * prompts.PREVIEW_CHARS  # the preview showed it all
        for iteration in range(1, limits.max_iterations + 1):
            messages = conversation.messages()
            prompt_chars = sum(len(m["content"]) for m in messages)
            await run.budget.cover(self._caller.estimate_cost_usd(run.request.root_model, prompt_chars,
                                                                  RESERVED_COMPLETION_TOKENS))
            if run.budget.exhausted:
                return None
            run.emit(IterationStarted(iteration=iteration, depth=depth, prompt_chars=prompt_chars))
            run.stats.iterations += 1
            blocks = _Blocks(functools.partial(self._execute, run, session, handler, iteration, depth))
            streamed = blocks.watch if self._settings.stream_root_replies else None
            try:
                reply = await self._root_call(run, messages, tools, iteration, depth, on_text=streamed)
            except BaseException:
                await blocks.cancel()
                raise
            conversation.add("assistant", reply.text)
            parsed = parse_reply(reply.text)
            if reply.tool_calls and not parsed.code_blocks:
                return _Answer(reply.text.strip(), reply.tool_calls)
            reports: list[prompts.BlockReport] = []
            notes: list[str] = []
            answer: str | None = None
            if reply.tool_calls:  # its arguments could not depend on output it had not seen: not sent
                notes.append(prompts.note_tool_calls_before_output(reply.tool_calls))
            for result in await blocks.results(parsed.code_blocks):
                reports.append(prompts.BlockReport(result.outcome, result.output))
                if result.final is not None:
                    answer = result.final.text
            if parsed.other_code_languages and not parsed.code_blocks:
                notes.append(prompts.note_other_languages(parsed.other_code_languages))
            if parsed.code_blocks:
                if parsed.answered and answer is None:
                    notes.append(prompts.NOTE_CODE_BEFORE_ANSWER)
            elif parsed.final_variable is not None:
                answer, problem = await (await session.get()).resolve_variable(parsed.final_variable)
                if answer is None:
                    notes.append(prompts.note_missing_variable(parsed.final_variable, problem))
            elif parsed.final_answer is not None:
                answer = parsed.final_answer
            elif parsed.inline_final:
                notes.append(prompts.NOTE_INLINE_FINAL)
            elif not parsed.other_code_languages:
                notes.append(prompts.NOTE_NO_CODE_NO_ANSWER)
            coverage = (await session.get()).coverage
            if depth == 1:  # the figure reported is about the request's own context
                run.stats.coverage = max(run.stats.coverage, coverage)
            if answer is not None:
                if questioned or coverage >= self._settings.min_coverage_to_answer:
                    return _Answer(answer)
                questioned = True
                notes.append(prompts.coverage_check(coverage))
            conversation.add("user", prompts.feedback(reports, notes, coverage, iteration,
                                                      limits.max_iterations))
        return None

    async def _execute(self, run: _Run, session: _LoadingSession, handler: _SubcallHandler, iteration: int,
                       depth: int, number: int, code: str) -> ExecResult:
        run.emit(BlockStarted(iteration=iteration, block=number, depth=depth, code=code))
        loaded = await session.get()
        result = await loaded.execute(code, handler)
        run.stats.blocks += 1
        run.emit(BlockExecuted(iteration=iteration, block=number, depth=depth, outcome=result.outcome,
                               duration_s=result.duration_s, output_chars=len(result.output),
                               output=result.output, coverage=result.coverage, cpu_s=result.cpu_s,
                               peak_rss_bytes=result.peak_rss_bytes, read_map=loaded.read_map))
        return result

    async def _final_request(self, run: _Run, conversation: _Conversation, session: _LoadingSession,
                             limit: Limit, depth: int) -> str:
        conversation.add("user", prompts.FINAL_REQUEST.format(limit=limit))
        # Without tools: a run stopped by a limit ends in its best text answer, never in a tool call.
        reply = (await self._root_call(run, conversation.messages(), None, conversation.replies, depth,
                                       final=True)).text
        parsed = parse_reply(reply)
        if parsed.final_variable is not None:
            value, _ = await (await session.get()).resolve_variable(parsed.final_variable)
            if value is not None:
                return value
        if parsed.final_answer is not None:
            return parsed.final_answer
        return answer_without_protocol(reply)

    async def _root_call(self, run: _Run, messages: list[dict[str, str]], tools: ClientTools | None,
                         iteration: int, depth: int, final: bool = False,
                         on_text: TextSink | None = None) -> ModelReply:
        params = {k: run.request.root_params[k] for k in ROOT_PARAMS if k in run.request.root_params}
        if tools is not None:
            params |= tools.params()
        started = time.monotonic()
        # What blocks started during the reply do is told after it, in the order of a reply read whole.
        held = run.events.hold()
        try:
            reply = await self._caller.complete(run.request.root_model, messages, params, run.request.cache,
                                                on_text)
        except BaseException:
            run.events.release(held)
            raise
        run.stats.record(reply)
        run.budget.spend(0.0 if reply.cached else reply.cost_usd)
        call = reply.as_call(run.request.root_model, sum(len(m["content"]) for m in messages),
                             time.monotonic() - started)
        run.events.release(held, RootReplied(iteration=iteration, depth=depth, call=call, final=final))
        return reply

    async def subcall(self, run: _Run, model: str, arriving: Prompt, reserved_usd: float) -> ModelCall:
        """The call as made, once its prompt has arrived; its `text` is what the code gets (an "Error: ..."
        string when it failed)."""
        started = time.monotonic()
        try:
            prompt = await arriving.text  # before taking a slot: waiting for the worker holds none
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not arriving.text.cancelled() or (current is not None and current.cancelling()):
                raise  # the run itself is being cancelled
            return _failed_call(run, model, "", reserved_usd, started, "the code's worker stopped before it "
                                "sent this prompt", prompt_chars=arriving.chars)
        async with run.subcalls:
            started = time.monotonic()
            try:
                reply = await self._caller.complete(model, [{"role": "user", "content": prompt}], {},
                                                    run.request.cache)
            except Exception as error:  # the model's code gets a string, never an exception
                return _failed_call(run, model, prompt, reserved_usd, started, str(error))
        run.stats.record(reply)
        run.stats.cached_subcalls += reply.cached
        run.budget.settle(reserved_usd, 0.0 if reply.cached else reply.cost_usd)
        return reply.as_call(model, len(prompt), time.monotonic() - started, prompt)

    async def nested_run(self, run: _Run, prompt: str, context: NestedContext, depth: int) -> str:
        if context is None:
            run_input = prompts.RunInput(prompt, prompt, None)
        elif isinstance(context, list):
            run_input = prompts.build_input([*context, {"role": "user", "content": prompt}])
        else:
            run_input = prompts.RunInput(context, prompt, None)
        run.stats.max_depth = max(run.stats.max_depth, depth)
        answer, _ = await self._solve(run, run_input, depth, deadline=None)
        return answer.text


def _failed_call(run: _Run, model: str, prompt: str, reserved_usd: float, started: float, error: str,
                 prompt_chars: int | None = None) -> ModelCall:
    """A sub-call that cost nothing and answers the code with the error (`prompt_chars`: the size the worker
    announced, for a prompt that never arrived)."""
    run.budget.settle(reserved_usd, 0.0)
    run.stats.subcall_errors += 1
    duration_s = time.monotonic() - started
    return ModelCall(model=model, prompt_chars=len(prompt) if prompt_chars is None else prompt_chars,
                     text=f"Error: {error}", error=error, prompt_tokens=0, completion_tokens=0, cost_usd=0.0,
                     cached=False, duration_s=duration_s, cache_key="", prompt=prompt,
                     started_at=time.time() - duration_s)


class _Emitter:
    """The run's events, in the order they would come if root replies were read whole: while a root reply
    streams in, the events of the blocks it has started already are held, and told after the reply's own.
    Holds nest as runs do (a nested run's reply inside a block that runs while its parent's reply streams):
    what an inner hold releases goes to the hold below it, if that is still held."""

    def __init__(self, put: Callable[[Event], None]) -> None:
        self._put = put
        self._holds: list[list[Event]] = []

    def emit(self, event: Event) -> None:
        if self._holds:
            self._holds[-1].append(event)
        else:
            self._put(event)

    def hold(self) -> list[Event]:
        held: list[Event] = []
        self._holds.append(held)
        return held

    def release(self, held: list[Event], first: Event | None = None) -> None:
        at = next(index for index, other in enumerate(self._holds) if other is held)
        del self._holds[at]
        events = [first, *held] if first is not None else held
        if at > 0:
            self._holds[at - 1].extend(events)
        else:
            for event in events:
                self._put(event)


class _LoadingSession:
    """A run's sandbox session while its context may still be loading: whoever needs it waits for it."""

    def __init__(self, loading: Awaitable[SandboxSession]) -> None:
        self._task = asyncio.ensure_future(loading)

    async def get(self) -> SandboxSession:
        return await asyncio.shield(self._task)  # a waiter's cancellation is not the load's: close() ends it

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
        await asyncio.wait([self._task])
        if not self._task.cancelled() and self._task.exception() is None:
            await self._task.result().close()


class _Blocks:
    """The ```repl blocks of one root reply, each started as soon as it is complete (while the model may
    still be writing), one at a time in order, as the protocol runs them."""

    def __init__(self, execute: Callable[[int, str], Awaitable[ExecResult]]) -> None:
        self._execute = execute
        self._watcher = BlockWatcher()
        self._started: list[str] = []
        self._tasks: list[asyncio.Task[ExecResult]] = []

    def watch(self, text: str) -> None:
        for code in self._watcher.feed(text):
            self._start(code)

    async def results(self, codes: list[str]) -> list[ExecResult]:
        """Every block's result, once the whole reply (whose blocks are `codes`) is in."""
        if codes[:len(self._started)] != self._started:  # BlockWatcher's promise, checked
            raise AssertionError("blocks found while streaming differ from the reply's")
        for code in codes[len(self._started):]:
            self._start(code)
        try:
            return [await task for task in self._tasks]
        except BaseException:
            await self.cancel()
            raise

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(self, code: str) -> None:
        previous = self._tasks[-1] if self._tasks else None
        number = len(self._tasks) + 1

        async def run() -> ExecResult:
            if previous is not None:
                await asyncio.wait([previous])  # its failure is reported once, by its own task
            return await self._execute(number, code)

        self._started.append(code)
        self._tasks.append(asyncio.create_task(run()))


class _SubcallHandler:
    """What the REPL's llm_query / llm_query_batched / rlm_query reach, for one run at one depth."""

    def __init__(self, engine: RLMEngine, caller: ModelCaller, run: _Run, depth: int) -> None:
        self._engine = engine
        self._caller = caller
        self._run = run
        self._depth = depth

    def prompt_refusals(self, chars: list[int], model: str | None) -> list[str | None]:
        """Why each prompt (of these many characters) for `model` cannot be sent ("Error: ..."), else None.
        The model is resolved once for the batch."""
        if self._run.request.limits.max_subcalls == 0:
            return ["Error: sub-calls are disabled in this run; work with code alone."] * len(chars)
        target = model or self._run.request.sub_model
        if (problem := self._caller.unknown_model(target)) is not None:
            return [f"Error: {problem}"] * len(chars)
        limit = self._caller.prompt_limit_chars(target)
        return [None if limit is None or count <= limit else
                (f"Error: this prompt has {count:,} characters, over the sub-model's limit of about "
                 f"{limit:,} characters. Split it into smaller pieces.") for count in chars]

    async def llm_query(self, prompts_: list[Prompt], model: str | None) -> list[str]:
        run, caller = self._run, self._caller
        target = model or run.request.sub_model
        # Every slot ends up holding a refusal or an answer.
        results = [refusal or "" for refusal in self.prompt_refusals([p.chars for p in prompts_], model)]
        sendable = [index for index, result in enumerate(results) if not result]
        # Every prompt of the batch is reserved at the largest one's estimate: simple, and never short.
        reserved_each = max((caller.estimate_cost_usd(target, prompts_[i].chars, RESERVED_COMPLETION_TOKENS)
                             for i in sendable), default=0.0)
        await run.budget.cover(len(sendable) * reserved_each)
        granted = run.budget.reserve(len(sendable), reserved_each)
        for index in sendable[granted:]:
            results[index] = run.budget.refusal()
        chosen = sendable[:granted]
        if chosen:
            run.emit(SubcallsDispatched(count=len(chosen), depth=self._depth))
            started = time.monotonic()
            calls = await asyncio.gather(*(self._engine.subcall(run, target, prompts_[i], reserved_each)
                                           for i in chosen))
            for index, call in zip(chosen, calls, strict=True):
                results[index] = call.text
            run.emit(SubcallsFinished(count=len(chosen), depth=self._depth,
                                      errors=sum(call.error is not None for call in calls),
                                      duration_s=time.monotonic() - started, calls=tuple(calls)))
        return results

    async def rlm_query(self, prompt: str, context: NestedContext) -> str:
        run = self._run
        if self._depth >= run.request.limits.max_depth:
            # At the depth limit a nested run is a plain sub-call, as the protocol promises.
            text = prompt if context is None else f"{prompt}\n\n{_as_text(context)}"
            return (await self.llm_query([Prompt.of(text)], None))[0]
        try:
            return await self._engine.nested_run(run, prompt, context, self._depth + 1)
        except Exception as error:  # a failed nested run is an answer the code can inspect
            return f"Error: the nested run failed: {error}"


def _as_text(context: NestedContext) -> str:
    return context if isinstance(context, str) else json.dumps(context)


class _Conversation:
    """The root model's messages. When they outgrow its window, the oldest outputs are elided first."""

    ELIDED = "[Output of an earlier reply removed to fit the model's window.]"

    def __init__(self, system: str, card: str, limit_chars: int | None) -> None:
        self._messages = [{"role": "system", "content": system}, {"role": "user", "content": card}]
        self._limit = limit_chars

    def add(self, role: str, content: str) -> None:
        self._messages.append({"role": role, "content": content})

    @property
    def replies(self) -> int:
        """The root model's replies so far: the number of the last iteration."""
        return sum(message["role"] == "assistant" for message in self._messages)

    def messages(self) -> list[dict[str, str]]:
        if self._limit is not None:
            total = sum(len(m["content"]) for m in self._messages)
            # Keep the system prompt, the context card and the latest exchange whole.
            for message in self._messages[2:-2]:
                if total <= self._limit:
                    break
                if message["role"] == "user" and message["content"] != self.ELIDED:
                    total -= len(message["content"]) - len(self.ELIDED)
                    message["content"] = self.ELIDED
        return list(self._messages)
