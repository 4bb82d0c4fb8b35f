// One run: its header from GET /v1/rlm/runs/{id}, its timeline built from its events, which the events
// stream sends from the first (a finished run's all at once; a running run's as they happen). The events
// are arranged as the record's `timeline` arranges them: iterations by depth, blocks under the iteration
// running at their depth, nested runs under the block running one depth up.
import {
  ApiError, KeyRefused, api, askForKey, byId, el, facts, failed, formatCost, formatCount, formatPercent,
  formatSeconds, formatTime, keyGate, problem, serverEvents,
} from "./viewer.js";

const RUN_ID = decodeURIComponent(location.pathname.slice(location.pathname.lastIndexOf("/") + 1));
const RUN_PATH = `/v1/rlm/runs/${encodeURIComponent(RUN_ID)}`;
const TERMINAL = new Set(["run_finished", "run_failed", "run_cancelled"]);
const RETRY_MS = 1000;
const MAX_RETRY_MS = 10000;
const HIGHLIGHT_BATCH = 100;
const SVG = "http://www.w3.org/2000/svg";

let view;  // the state of the run on screen, made again when the key changes

function freshView() {
  byId("timeline").replaceChildren();
  byId("coverage-chart").replaceChildren();
  byId("read-map").replaceChildren();
  byId("coverage-meter").value = 0;
  byId("coverage-text").textContent = "";
  return {
    latest: new Map(),  // depth -> the iteration going on at that depth
    running: new Map(),  // depth -> the block running at that depth
    coverage: [],  // [seconds since the start, fraction of context read] after each top-level block
    lastSeq: null,
    live: false,  // the run was going when the page opened: say what happens
    pending: [],  // [code element, code] waiting for highlighting
    highlighting: false,
    controller: new AbortController(),
  };
}

const plural = (n, word, words = `${word}s`) => `${formatCount(n)} ${n === 1 ? word : words}`;
const formatBytes = (n) => (n === null || n === undefined ? "–" : `${(n / 1048576).toFixed(1)} MiB`);
const heading = (level, text) => el(`h${Math.min(6, level)}`, { text });

function say(text) {
  if (view.live) byId("live").textContent = text;
}

function callFacts(call) {
  const parts = [call.model, formatSeconds(call.duration_s),
    `${formatCount(call.prompt_tokens)} + ${formatCount(call.completion_tokens)} tokens`, formatCost(call.cost_usd)];
  if (call.cached) parts.push("cache hit");
  if (call.error) parts.push("error");
  return parts.join(" · ");
}

// --- the timeline, event by event ------------------------------------------------------------------------

function iterationStarted(event) {
  const depth = event.depth;
  const parent = view.running.get(depth - 1);
  const title = depth > 1 ? `Nested run (depth ${depth}), iteration ${event.iteration}` : `Iteration ${event.iteration}`;
  const reply = el("div", { class: "reply-slot" });
  const blocks = el("ol", { class: "blocks", "aria-label": `Code blocks of ${title.toLowerCase()}` });
  const item = el("li", { class: `iteration depth-${depth}` }, el("article", {},
    heading(1 + 2 * depth, title),
    el("p", { class: "meta", text: `at ${formatSeconds(event.t)} · root prompt ${plural(event.prompt_chars, "character")}` }),
    reply, blocks));
  if (parent) {
    parent.nested ??= parent.article.appendChild(el("ol", { class: "iterations nested", "aria-label": "Nested runs" }));
    parent.nested.append(item);
  } else {
    byId("timeline").append(item);
  }
  view.latest.set(depth, { reply, blocks, depth });
  say(`${title} started.`);
}

function rootReplied(event) {
  const iteration = view.latest.get(event.depth);
  if (!iteration) return;
  const call = event.call;
  const label = event.final ? "Reply to the request for a final answer" : "Root model reply";
  iteration.reply.append(el("details", { class: "reply", open: true },
    el("summary", { text: `${label} · ${callFacts(call)}` }),
    el("pre", { text: call.text }),
    call.error ? el("p", { class: "error", text: `Error: ${call.error}` }) : null));
  say(`${label} received.`);
}

function blockStarted(event) {
  const iteration = view.latest.get(event.depth);
  if (!iteration) return;
  const code = el("code", { class: "python", text: event.code });
  const block = {
    outcome: el("p", { class: "meta outcome", text: "running…" }),
    output: el("div", { class: "output-slot" }),
    fanout: null, calls: null, summary: null, nested: null,
    subcalls: [], batches: 0, wall: 0,
  };
  block.article = el("article", { class: "block" },
    heading(2 + 2 * event.depth, `Block ${event.block}`),
    el("pre", { class: "code", "aria-label": `Code of block ${event.block}` }, code),
    block.outcome, block.output);
  iteration.blocks.append(el("li", {}, block.article));
  view.running.set(event.depth, block);
  highlight(code, event.code);
  say(`Running block ${event.block} of iteration ${event.iteration}.`);
}

function blockExecuted(event) {
  const block = view.running.get(event.depth);
  if (!block) return;
  view.running.delete(event.depth);
  block.outcome.className = `meta outcome ${event.outcome}`;
  block.outcome.textContent = [event.outcome, formatSeconds(event.duration_s), `CPU ${formatSeconds(event.cpu_s)}`,
    `peak memory ${formatBytes(event.peak_rss_bytes)}`, `coverage ${formatPercent(event.coverage)}`].join(" · ");
  block.output.append(el("details", { class: "output", open: true },
    el("summary", { text: `Output (${plural(event.output_chars, "character")})` }),
    el("pre", { text: event.output })));
  if (event.depth === 1) {
    addCoverage(event.t, event.coverage);
    if (event.read_map && event.read_map.length) showReadMap(event.read_map);
  }
  say(`Block ${event.block}: ${event.outcome}.`);
}

function subcallsFinished(event) {
  const block = view.running.get(event.depth);
  if (!block) return;
  if (!block.fanout) {
    block.summary = el("summary");
    block.calls = el("ol", { class: "calls" });
    block.fanout = el("details", { class: "fanout" }, block.summary, block.calls);
    block.article.insertBefore(block.fanout, block.output);
  }
  const first = block.subcalls.length;
  block.subcalls.push(...event.calls);
  block.batches += 1;
  block.wall += event.duration_s;
  block.calls.append(...event.calls.map((call, i) => el("li", {}, el("details", { class: "call" },
    el("summary", { text: `Sub-call ${first + i + 1} · ${callFacts(call)}` }),
    el("p", { class: "label", text: "Prompt" }), el("pre", { text: call.prompt }),
    el("p", { class: "label", text: "Answer" }), el("pre", { text: call.text }),
    call.error ? el("p", { class: "error", text: `Error: ${call.error}` }) : null))));
  const calls = block.subcalls;
  const latencies = calls.map((call) => call.duration_s);
  block.summary.textContent = [
    `${plural(calls.length, "sub-call")} in ${plural(block.batches, "batch", "batches")}`,
    `wall ${formatSeconds(block.wall)}`,
    `total latency ${formatSeconds(latencies.reduce((a, b) => a + b, 0))}`,
    `max ${formatSeconds(Math.max(...latencies))}`,
    formatCost(calls.reduce((sum, call) => sum + call.cost_usd, 0)),
    plural(calls.filter((call) => call.cached).length, "cache hit"),
    plural(calls.filter((call) => call.error).length, "error"),
  ].join(" · ");
  say(`${plural(event.count, "sub-call")} answered.`);
}

const APPLY = {
  iteration_started: iterationStarted,
  root_replied: rootReplied,
  block_started: blockStarted,
  block_executed: blockExecuted,
  subcalls_dispatched: (event) => say(`${plural(event.count, "sub-call")} sent.`),
  subcalls_finished: subcallsFinished,
};

// --- coverage ------------------------------------------------------------------------------------------

function addCoverage(t, fraction) {
  view.coverage.push([t, fraction]);
  showCoverage(fraction);
  const width = 320;
  const height = 64;
  const end = Math.max(...view.coverage.map(([time]) => time), 1e-3);
  const points = [[0, 0], ...view.coverage].map(([time, share]) =>
    `${((time / end) * width).toFixed(1)},${(height - share * height).toFixed(1)}`);
  const chart = document.createElementNS(SVG, "svg");
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.setAttribute("class", "coverage-chart");
  chart.setAttribute("role", "img");
  chart.setAttribute("aria-label", `Coverage over time: ${view.coverage.map(([time, share]) =>
    `${formatPercent(share)} at ${formatSeconds(time)}`).join(", ")}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  chart.append(line);
  byId("coverage-chart").replaceChildren(chart);
}

// Which parts of context were read: one cell per hundredth of it, as opaque as the share of it read.
function showReadMap(cells) {
  const width = 320;
  const height = 16;
  const bar = document.createElementNS(SVG, "svg");
  bar.setAttribute("viewBox", `0 0 ${width} ${height}`);
  bar.setAttribute("class", "read-map");
  bar.setAttribute("preserveAspectRatio", "none");  // the cells stretch across the bar's width
  bar.setAttribute("shape-rendering", "crispEdges");  // no seams between neighbouring cells
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", `Parts of context read, from its start to its end: ${readRanges(cells)}`);
  cells.forEach((percent, index) => {
    const cell = document.createElementNS(SVG, "rect");
    cell.setAttribute("x", ((index * width) / cells.length).toFixed(2));
    cell.setAttribute("width", (width / cells.length).toFixed(2));
    cell.setAttribute("height", String(height));
    cell.setAttribute("fill-opacity", String(Math.max(percent, 0) / 100));
    cell.setAttribute("data-percent", String(percent));
    bar.append(cell);
  });
  byId("read-map").replaceChildren(bar);
}

// "0% to 40%: read, 40% to 100%: not read": the map's runs of cells read (half or more) and not.
function readRanges(cells) {
  const runs = [];
  cells.forEach((percent, index) => {
    const read = percent >= 50;
    if (runs.length && runs[runs.length - 1].read === read) runs[runs.length - 1].end = index + 1;
    else runs.push({ read, start: index, end: index + 1 });
  });
  const at = (index) => Math.round((index * 100) / cells.length);
  return runs.map((run) => `${at(run.start)}% to ${at(run.end)}%: ${run.read ? "read" : "not read"}`).join(", ");
}

function showCoverage(fraction) {
  byId("coverage-meter").value = fraction;
  byId("coverage-text").textContent = `${formatPercent(fraction)} of context read`;
}

// --- highlighting: Pygments on the server, text nodes here ----------------------------------------------

function highlight(node, code) {
  view.pending.push([node, code]);
  if (!view.highlighting) {
    view.highlighting = true;
    setTimeout(highlightPending, 0);  // the blocks of one burst of events go in one request
  }
}

async function highlightPending() {
  const current = view;
  while (current.pending.length) {
    const batch = current.pending.splice(0, HIGHLIGHT_BATCH);
    let answer;
    try {
      answer = await api("/ui/highlight", { method: "POST", body: { code: batch.map(([, code]) => code) } });
    } catch (error) {
      failed(error, "The code could not be highlighted");
      break;
    }
    answer.data.forEach((runs, i) => batch[i][0].replaceChildren(...runs.map(([style, text]) =>
      (style ? el("span", { class: `tok-${style}`, text }) : document.createTextNode(text)))));
  }
  current.highlighting = false;
}

// --- the header ------------------------------------------------------------------------------------------

function showHeader(run) {
  const input = run.input;
  const limits = run.limits;
  const ended = run.finished_at ? run.finished_at - run.started_at : Date.now() / 1000 - run.started_at;
  facts(byId("overview"), [
    ["Status", run.status],
    ["Key", run.key_alias],
    ["Root model", run.root_model],
    ["Sub-model", run.sub_model],
    ["Started", formatTime(run.started_at)],
    [run.finished_at ? "Duration" : "Running for", formatSeconds(ended)],
    ["Input", `${input.type}, ${plural(input.chars, "character")}, ${plural(input.messages, "message")}`],
    ["Input SHA-256", input.sha256 ?? "being computed"],
    ["Limits", [`${limits.max_iterations} iterations`, `depth ${limits.max_depth}`, `${limits.max_subcalls} sub-calls`,
      limits.max_cost_usd === null ? "no cost cap" : formatCost(limits.max_cost_usd),
      limits.timeout_s === null ? "no time limit" : formatSeconds(limits.timeout_s)].join(", ")],
  ]);
  byId("input-head").textContent = input.head;
  byId("input-tail").textContent = input.tail;
  const outcome = byId("outcome");
  outcome.hidden = run.status === "running";
  if (outcome.hidden) return;
  facts(byId("ending"), [
    ["Status", run.status],
    ["Finish reason", run.finish_reason ?? "–"],
    ["Stopped by", run.stopped ? JSON.stringify(run.stopped) : "the model's answer"],
    ...(run.error ? [["Error", `${run.error.status} ${run.error.code}: ${run.error.message}`]] : []),
  ]);
  byId("answer").textContent = run.answer ?? "(none)";
  const totals = run.totals;
  if (!totals) {
    byId("totals").replaceChildren(el("dt", { text: "Totals" }), el("dd", { text: "none: the run did not finish" }));
    return;
  }
  showCoverage(totals.coverage);
  facts(byId("totals"), [
    ["Iterations", formatCount(totals.iterations)],
    ["Code blocks", formatCount(totals.code_blocks)],
    ["Sub-calls", formatCount(totals.subcalls)],
    ["Cache hits", formatCount(totals.cached_subcalls)],
    ["Sub-call errors", formatCount(totals.subcall_errors)],
    ["Tokens", `${formatCount(totals.prompt_tokens)} prompt + ${formatCount(totals.completion_tokens)} completion`],
    ["Cost", formatCost(totals.cost_usd)],
    ["Saved by the cache", formatCost(totals.cost_saved_usd)],
    ["Coverage", formatPercent(totals.coverage)],
    ["Deepest run", `depth ${totals.max_depth}`],
    ["Duration", formatSeconds(totals.duration_s)],
  ]);
}

// --- loading and following ------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Applies the run's events until its last; true when it got there. A dropped stream is resumed after the
// last event seen (Last-Event-ID), so each event is applied once.
async function follow(current) {
  let delay = RETRY_MS;
  for (;;) {
    try {
      for await (const event of serverEvents(`${RUN_PATH}/events`, current.lastSeq, current.controller.signal)) {
        APPLY[event.type]?.(event);
        current.lastSeq = event.seq;
        if (TERMINAL.has(event.type)) return true;
      }
    } catch (error) {
      if (current.controller.signal.aborted) return false;
      if (error instanceof KeyRefused || error instanceof ApiError) {
        failed(error, "The run's events could not be read");
        return false;
      }
    }
    say("The connection dropped; resuming…");
    await sleep(delay);
    delay = Math.min(2 * delay, MAX_RETRY_MS);
  }
}

async function show() {
  view?.controller.abort();
  const current = view = freshView();
  byId("run-id").textContent = RUN_ID;
  let run;
  try {
    run = await api(RUN_PATH);
  } catch (error) {
    byId("run").hidden = true;
    if (error instanceof ApiError && error.code === "run_not_found") askForKey(`${error.message} Another key may see it.`);
    else failed(error, "The run could not be read");
    return;
  }
  problem(null);
  showHeader(run);
  byId("run").hidden = false;
  current.live = run.status === "running";
  byId("live").textContent = current.live ? "The run is going: following it live." : "";
  if (!(await follow(current)) || current !== view) return;
  const ended = await api(RUN_PATH).catch((error) => failed(error, "The run could not be read"));
  if (!ended) return;
  showHeader(ended);
  byId("live").textContent = `The run is ${ended.status}.`;
}

keyGate(show);
