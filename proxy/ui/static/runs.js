// The list of runs: newest first, a page at a time (the API's `after` cursor), filtered by status and model.
import {
  api, byId, el, failed, formatCost, formatCount, formatSeconds, formatTime, keyGate, problem,
} from "./viewer.js";

// Runs per page: 20, or the page's own ?limit= (1 to 100, as the API takes).
const PAGE = Math.min(100, Math.max(1, Number(new URLSearchParams(location.search).get("limit")) || 20));
const PREVIEW_CHARS = 80;
const cursors = [];  // the `after` of each page before this one
let after = null;
let lastId = null;

function duration(run) {
  if (run.totals) return formatSeconds(run.totals.duration_s);
  const end = run.finished_at || Date.now() / 1000;
  return formatSeconds(end - run.started_at) + (run.finished_at ? "" : " so far");
}

function preview(answer) {
  if (!answer) return "";
  return answer.length > PREVIEW_CHARS ? `${answer.slice(0, PREVIEW_CHARS)}…` : answer;
}

function row(run) {
  const totals = run.totals || {};
  const link = el("a", { href: `runs/${encodeURIComponent(run.id)}`, text: run.id });
  return el("tr", {},
    el("th", { scope: "row" }, link),
    el("td", {}, el("span", { class: `badge ${run.status}`, text: run.status })),
    el("td", { text: run.key_alias }),
    el("td", { text: run.root_model }),
    el("td", { text: formatTime(run.started_at) }),
    el("td", { text: duration(run) }),
    el("td", { class: "num", text: formatCount(totals.iterations) }),
    el("td", { class: "num", text: formatCount(totals.subcalls) }),
    el("td", { class: "num", text: formatCost(totals.cost_usd) }),
    el("td", { class: "preview", text: preview(run.answer) }));
}

async function load() {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (after) query.set("after", after);
  for (const name of ["status", "model"]) {
    const value = byId(name).value.trim();
    if (value) query.set(name, value);
  }
  byId("list-status").textContent = "Loading runs…";
  let page;
  try {
    page = await api(`/v1/rlm/runs?${query}`);
  } catch (error) {
    byId("runs").hidden = true;
    byId("list-status").textContent = "";
    failed(error, "The runs could not be read");
    return;
  }
  problem(null);
  byId("runs").hidden = false;
  byId("runs-table").tBodies[0].replaceChildren(...page.data.map(row));
  lastId = page.last_id;
  byId("older").disabled = !page.has_more;
  byId("newer").disabled = cursors.length === 0;
  byId("list-status").textContent = page.data.length ? `${page.data.length} runs on this page.` : "No runs.";
}

function restart() {
  cursors.length = 0;
  after = null;
  load();
}

byId("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  restart();
});
byId("refresh").addEventListener("click", load);
byId("older").addEventListener("click", () => {
  cursors.push(after);
  after = lastId;
  load();
});
byId("newer").addEventListener("click", () => {
  after = cursors.pop() ?? null;
  load();
});
keyGate(restart);
