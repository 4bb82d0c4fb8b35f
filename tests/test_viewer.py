"""The run viewer (/ui/runs) in a real browser: Debian's chromium driven by Playwright loads runs that the
official openai SDK made through the real proxy against the mock upstream, and the tests read the DOM.
Screenshots go to test-artifacts/ (git-ignored)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from proxy.mock_policy import needle_prompt
from tests.harness import EXTRA_KEY, MASTER_KEY, Mock, Server, StartProxy, rlm_config
from tests.test_trajectories_e2e import KEY, RLM_ON, VALUE, create, exec_prompt, finished

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
OTHER_KEY = "sk-test-viewer-other"
CANARY = '<img src=x onerror="document.title=`pwned`">'


@pytest.fixture(scope="module")
def proxy(mock_upstream: Mock, start_proxy: StartProxy) -> Server:
    config = rlm_config(mock_upstream, rlm={"max_depth": 2})
    config["server"]["keys"] = [{"key": OTHER_KEY, "alias": "other"}]
    return start_proxy(config)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, proxy: Server) -> Iterator[Page]:
    context = browser.new_context(color_scheme="light", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text)
            if "Content Security Policy" in message.text else None)
    yield page
    context.close()
    assert problems == []  # no script error, nothing the CSP had to block
    assert requested and all(url.startswith(proxy.url + "/") for url in requested)  # nothing elsewhere


def enter_key(page: Page, key: str) -> None:
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True)


def test_a_finished_run_shows_its_iterations_code_subcalls_and_answer(page: Page, proxy: Server) -> None:
    prompt = needle_prompt(300_000, KEY, VALUE, depth=0.4) + " [[policy:early_answer]]"
    completion, run_id = create(proxy, prompt)
    assert completion.choices[0].message.content == VALUE
    record = finished(proxy, run_id)
    page.goto(proxy.url + "/ui/runs")
    enter_key(page, MASTER_KEY)
    row = page.locator("#runs-table tbody tr", has=page.locator(f"a:text-is('{run_id}')"))
    expect(row).to_contain_text("finished")
    expect(row).to_contain_text(VALUE)  # the answer's preview
    row.locator("a").click()
    expect(page).to_have_url(f"{proxy.url}/ui/runs/{run_id}")
    expect(page.locator("#live")).to_have_text("The run is finished.")
    iterations = record["iterations"]
    assert len(iterations) == record["totals"]["iterations"] >= 3
    expect(page.locator(".iteration")).to_have_count(len(iterations))
    codes = [block["code"] for iteration in iterations for block in iteration["blocks"]]
    expect(page.locator("pre.code")).to_have_text(codes)  # whole, highlighted or not
    expect(page.locator("pre.code .tok-k").first).to_be_visible()  # Pygments' tokens arrived
    fanned = [block for iteration in iterations for block in iteration["blocks"] if block["subcalls"]]
    assert fanned
    fanouts = page.locator(".fanout > summary")
    expect(fanouts).to_have_count(len(fanned))
    count = len(fanned[0]["subcalls"])
    expect(fanouts.first).to_contain_text(f"{count} sub-calls in 1 batch")
    expect(fanouts.first).to_contain_text("0 errors")
    fanouts.first.click()  # expand: each call's prompt and answer
    calls = page.locator(".fanout .call")
    expect(calls).to_have_count(count)
    calls.first.locator("summary").click()
    expect(calls.first.locator("pre").first).to_contain_text("special magic number")
    expect(page.locator("#answer")).to_have_text(VALUE)
    expect(page.locator("#coverage-text")).to_have_text("100% of context read")
    expect(page.locator("#coverage-chart svg polyline")).to_have_count(1)
    read_map = page.locator("#read-map svg")
    expect(read_map.locator("rect")).to_have_count(100)  # a cell per hundredth of context, each read
    expect(read_map).to_have_attribute("aria-label", "Parts of context read, from its start to its end: "
                                                     "0% to 100%: read")
    expect(page.locator("#totals")).to_contain_text(f"Sub-calls{record['totals']['subcalls']}")
    expect(page.locator("#ending")).to_contain_text("Finish reasonstop")
    screenshot(page, "viewer-run.png")


def test_model_text_is_shown_as_text_never_as_markup(page: Page, proxy: Server) -> None:
    code = f"note = {CANARY!r}\nprint(note)\nFINAL(note)\n"
    completion, run_id = create(proxy, exec_prompt(code, f" {CANARY}"))
    assert completion.choices[0].message.content == CANARY
    finished(proxy, run_id)
    page.goto(f"{proxy.url}/ui/runs/{run_id}")
    enter_key(page, MASTER_KEY)
    expect(page.locator("#answer")).to_have_text(CANARY)
    expect(page.locator("pre.code")).to_have_text([code])
    expect(page.locator("pre.code .tok-s").first).to_be_visible()
    expect(page.locator(".output pre")).to_contain_text([CANARY])
    expect(page.locator(".reply pre").first).to_contain_text(CANARY)
    expect(page.locator("#input-head")).to_contain_text(CANARY)
    assert page.locator("img").count() == 0 and page.title() != "pwned"
    page.goto(f"{proxy.url}/ui/runs?limit=1")  # the key stays in the tab: no form this time
    expect(page.locator("#runs-table tbody tr")).to_have_count(1)
    expect(page.locator("#runs-table .preview")).to_have_text(CANARY)
    assert page.locator("img").count() == 0 and page.title() != "pwned"


def test_a_running_run_updates_live(page: Page, proxy: Server) -> None:
    calls = 8
    code = f"for i in range({calls}):\n    print(llm_query(f'[[mock:latency_ms=500]] part {{i}}'))\n"
    started = threading.Event()
    run: dict[str, str] = {}

    def client() -> None:
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": exec_prompt(code)}]}
        with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=60, json=body,
                          headers={"authorization": f"Bearer {MASTER_KEY}", **RLM_ON}) as response:
            run["id"] = response.headers["x-rlm-run-id"]
            started.set()
            for _ in response.iter_lines():
                pass

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert started.wait(30)
        page.goto(f"{proxy.url}/ui/runs/{run['id']}")
        enter_key(page, MASTER_KEY)
        expect(page.locator("#live")).not_to_have_text("")
        expect(page.locator("#overview")).to_contain_text("Statusrunning")  # opened while it ran
        expect(page.locator(".outcome").first).to_have_text("running…")
        expect(page.locator(".fanout > summary")).to_contain_text(f"{calls} sub-calls in {calls} batches",
                                                                  timeout=30_000)
        expect(page.locator("#live")).to_have_text("The run is finished.", timeout=30_000)
    finally:
        thread.join(60)
    expect(page.locator(".outcome").first).to_contain_text("ok")
    expect(page.locator("#overview")).to_contain_text("Statusfinished")
    expect(page.locator(".fanout .call")).to_have_count(calls)
    expect(page.locator("#outcome")).to_be_visible()
    screenshot(page, "viewer-live.png")


def test_a_key_sees_only_its_own_runs_and_a_refused_key_is_asked_again(page: Page, proxy: Server) -> None:
    _, theirs = create(proxy, needle_prompt(20_000, KEY, VALUE), key=EXTRA_KEY)
    finished(proxy, theirs)
    page.goto(f"{proxy.url}/ui/runs/{theirs}")
    enter_key(page, OTHER_KEY)
    expect(page.locator("#problem")).to_contain_text(f"No run with id '{theirs}'")
    expect(page.locator("#key-form")).to_be_visible()  # to try another key
    expect(page.locator("#run")).to_be_hidden()
    enter_key(page, "sk-wrong")
    expect(page.locator("#problem")).to_contain_text("The proxy refused the key")
    enter_key(page, EXTRA_KEY)
    expect(page.locator("#answer")).to_have_text(VALUE)
    expect(page.locator("#problem")).to_be_hidden()
    assert "sk-" not in page.url
    page.goto(f"{proxy.url}/ui/runs")
    page.click("#forget-key")
    enter_key(page, OTHER_KEY)
    expect(page.locator("#list-status")).to_have_text("No runs.")  # its own: none
    page.select_option("#status", "finished")
    page.click("#filters button[type=submit]")
    expect(page.locator("#list-status")).to_have_text("No runs.")
    assert page.evaluate("Object.keys(localStorage).length") == 0


def test_the_list_pages_with_after(page: Page, proxy: Server) -> None:
    ids = [create(proxy, needle_prompt(20_000, KEY, VALUE), key=OTHER_KEY)[1] for _ in range(3)]
    for run_id in ids:
        finished(proxy, run_id, OTHER_KEY)
    page.goto(f"{proxy.url}/ui/runs?limit=2")
    enter_key(page, OTHER_KEY)
    links = page.locator("#runs-table tbody th a")
    expect(links).to_have_text(ids[:0:-1])
    expect(page.locator("#newer")).to_be_disabled()
    page.click("#older")
    expect(links).to_have_text(ids[:1])
    expect(page.locator("#older")).to_be_disabled()
    page.click("#newer")
    expect(links).to_have_text(ids[:0:-1])
    page.fill("#model", "not-a-model")
    page.click("#filters button[type=submit]")
    expect(page.locator("#list-status")).to_have_text("No runs.")


def test_pages_and_assets_carry_a_strict_content_security_policy(proxy: Server) -> None:
    for path, media_type in (("/ui/runs", "text/html"), ("/ui/runs/any-run", "text/html"),
                             ("/ui/static/run.js", "text/javascript"), ("/ui/static/viewer.css", "text/css")):
        response = httpx.get(proxy.url + path)  # no key: the pages hold no data
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "connect-src 'self'" in policy and "unsafe" not in policy and "http" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    for name in ("nope.js", "..%2Fapp.py", "__init__.py"):
        response = httpx.get(f"{proxy.url}/ui/static/{name}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_the_highlighter_needs_a_key_and_gives_back_the_code(proxy: Server) -> None:
    code = ["def f(x):  # <b>\n    return len('<img>') + 1\n", "", "\ttabs\r\nand  spaces  \n\n"]
    assert httpx.post(proxy.url + "/ui/highlight", json={"code": code}).status_code == 401
    response = httpx.post(proxy.url + "/ui/highlight", json={"code": code},
                          headers={"authorization": f"Bearer {OTHER_KEY}"})
    assert response.status_code == 200
    tokens = response.json()["data"]
    assert ["".join(text for _, text in runs) for runs in tokens] == [c.replace("\r\n", "\n") for c in code]
    assert ["k", "def"] in tokens[0] and ["nf", "f"] in tokens[0] and ["c", "# <b>"] in tokens[0]
    assert ["nb", "len"] in tokens[0] and ["s", "'<img>'"] in tokens[0] and ["m", "1"] in tokens[0]
    for body in ({}, {"code": "not a list"}, {"code": [1]}, {"code": ["x"] * 501}):
        bad = httpx.post(proxy.url + "/ui/highlight", json=body,
                         headers={"authorization": f"Bearer {OTHER_KEY}"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
