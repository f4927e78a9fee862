"""The reward inspector (GET /inspect) in a real headless Chromium against a live ``endorm serve``.

The page's tokens, their shading values and the scores must be exactly the API's for the same
request (made again here with httpx); the auth path; an API error shown as the API's message;
keyboard focus on a token shows its details; the issue's acceptance checks: the run control is reached
with Tab and runs with Enter and with Space, a progress/busy state while a request is in flight (held
by the test, not timed) and then the result, a response of 2000+ tokens wraps with no horizontal scroll
on a 1280-px window, and the page reflows at 200% zoom (no horizontal scroll, no clipped control).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import API_KEY, tiny_server
from tests.tools import require_tool, tool_missing

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEADLINE_S = 300  # polling deadline (a state, not a speed)

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

PROMPT = "What is 2+3?"
SYSTEM = "Answer with digits only."
RESPONSES = ["5", "The answer is six."]


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if webdriver is None:
        tool_missing("selenium", "not installed (the dev extra installs it)")
    require_tool("chromium", candidates=[CHROMIUM])
    require_tool("chromedriver", candidates=[DRIVER])
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_window_size(1280, 900)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    """The tiny llama with its whole 2048-position context (the shared server stops at 512 tokens), so
    a 2000-token response fits; same key as the shared server."""
    with tiny_server(
        tmp_path_factory,
        "inspector-long",
        "--api-key",
        API_KEY,
        "--max-model-len",
        "2048",
        "--request-timeout-s",
        "600",
    ) as proc:
        yield proc


def _wait(drv, cond):
    return WebDriverWait(drv, DEADLINE_S, poll_frequency=0.2).until(cond)


def _open_with_key(drv, url: str) -> None:
    drv.get(url + "/inspect")
    form = drv.find_element(By.ID, "key-form")
    _wait(drv, lambda d: form.is_displayed())
    assert "key" in drv.find_element(By.ID, "key-message").text.lower()
    drv.find_element(By.ID, "api-key").send_keys(API_KEY)
    drv.find_element(By.ID, "key-submit").click()
    _wait(drv, lambda d: d.find_element(By.ID, "model-info").get_attribute("data-fingerprint") is not None)


def _fill(drv, responses: list[str], system: str = SYSTEM) -> None:
    drv.find_element(By.ID, "prompt").clear()
    drv.find_element(By.ID, "prompt").send_keys(PROMPT)
    drv.find_element(By.ID, "system").clear()
    drv.find_element(By.ID, "system").send_keys(system)
    boxes = drv.find_elements(By.CSS_SELECTOR, "textarea.response")
    while len(boxes) < len(responses):
        drv.find_element(By.ID, "add-response").click()
        boxes = drv.find_elements(By.CSS_SELECTOR, "textarea.response")
    for extra in drv.find_elements(By.CSS_SELECTOR, ".response-in")[len(responses) :]:
        extra.find_element(By.CSS_SELECTOR, "button.remove").click()
    boxes = drv.find_elements(By.CSS_SELECTOR, "textarea.response")
    for box, text in zip(boxes, responses):
        box.clear()
        drv.execute_script("arguments[0].value = arguments[1];", box, text)  # exact text (newlines, long)


def _run(drv) -> None:
    drv.execute_script(
        "document.getElementById('responses-out').innerHTML = '';document.getElementById('progress').textContent = '';"
    )
    drv.find_element(By.ID, "run").click()
    _wait(
        drv,
        lambda d: d.find_element(By.ID, "progress").text in ("Done.",) or d.find_element(By.ID, "error").is_displayed(),
    )


def test_page_is_static_and_open(server):
    for path, kind in (
        ("/inspect", "text/html"),
        ("/inspect/inspector.js", "javascript"),
        ("/inspect/inspector.css", "text/css"),
    ):
        r = httpx.get(server.url + path, timeout=60)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    page = httpx.get(server.url + "/inspect", timeout=60).text
    assert "http://" not in page and "https://" not in page  # nothing external
    assert httpx.get(server.url + "/inspect/nope.js", timeout=60).status_code == 404


def reward_scale(results: list[dict]) -> float:
    """The page's reward scale (inspector.js ``rewardScale``): the 95th percentile (nearest rank
    below) of |reward| over every token but each response's last (the end of turn, whose reward is
    the raw logit); the tokens past it are drawn at full colour and outlined."""
    body = [abs(t["reward"]) for r in results for t in r["tokens"][:-1]]
    values = sorted(body or [abs(t["reward"]) for r in results for t in r["tokens"]])
    if not values:
        return 1.0
    return values[int(0.95 * (len(values) - 1))] or values[-1] or 1.0


def test_reward_scale_leaves_out_the_end_of_turn_token():
    """The rule itself, on numbers: an end-of-turn reward 100x the rest does not move the scale."""
    results = [{"tokens": [{"reward": r} for r in [0.1 * i for i in range(1, 21)] + [250.0]]}]
    assert reward_scale(results) == 0.1 * 19  # the 95th percentile of 0.1 .. 2.0 (nearest rank below)
    assert reward_scale([{"tokens": [{"reward": -3.0}]}]) == 3.0  # one token: it is the scale
    assert reward_scale([{"tokens": []}]) == 1.0


def test_tokens_shades_and_scores_are_the_apis(browser, server, client):
    _open_with_key(browser, server.url)
    card = client.get("/v1/models").json()["data"][0]
    info = browser.find_element(By.ID, "model-info")
    assert info.get_attribute("data-model") == card["id"]
    assert info.get_attribute("data-fingerprint") == card["system_fingerprint"]
    _fill(browser, RESPONSES)
    _run(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    api = client.post(
        "/compare",
        json={
            "messages": [{"role": "user", "content": PROMPT}],
            "system": SYSTEM,
            "responses": RESPONSES,
            "aggregation": "sum",
            "return_tokens": True,
        },
    ).json()
    scale = reward_scale(api["results"])
    # the end-of-turn token does not set the scale (on a max scale it did, and left the rest white)
    assert scale <= max(abs(t["reward"]) for r in api["results"] for t in r["tokens"][:-1])
    sections = browser.find_elements(By.CSS_SELECTOR, ".response-out")
    assert len(sections) == 2
    for sec, res in zip(sections, api["results"]):
        assert float(sec.get_attribute("data-score")) == res["score"]
        toks = sec.find_elements(By.CSS_SELECTOR, ".tok")
        assert len(toks) == len(res["tokens"])
        for el, t in zip(toks, res["tokens"]):
            assert int(el.get_attribute("data-id")) == t["id"]
            assert float(el.get_attribute("data-reward")) == t["reward"]
            assert float(el.get_attribute("data-logprob")) == t["logprob"]
            assert float(el.get_attribute("data-shade")) == max(-1.0, min(1.0, t["reward"] / scale))
            beyond = "beyond" in el.get_attribute("class").split()
            assert beyond == (abs(t["reward"]) > scale), (t, scale)
            assert browser.execute_script("return arguments[0].textContent", el) == t["text"]
    assert browser.find_element(By.ID, "ranking").get_attribute("data-ranking") == ",".join(map(str, api["ranking"]))
    for i, row in enumerate(api["probabilities"]):
        for j, p in enumerate(row):
            cell = browser.find_element(By.CSS_SELECTOR, f"#bt td[data-i='{i}'][data-j='{j}']")
            assert float(cell.get_attribute("data-p")) == p
    meta = browser.find_element(By.ID, "result-meta")
    assert meta.get_attribute("data-fingerprint") == api["system_fingerprint"]
    assert float(meta.get_attribute("data-alpha")) == api["alpha"]
    curl = browser.find_element(By.ID, "curl").text
    assert "/compare" in curl and "Bearer $ENDORM_API_KEY" in curl and API_KEY not in curl


def test_keyboard_focus_shows_token_details(browser, server):
    if not browser.find_elements(By.CSS_SELECTOR, ".tok"):
        _open_with_key(browser, server.url)
        _fill(browser, RESPONSES)
        _run(browser)
    browser.find_element(By.ID, "copy-curl")  # page rendered
    first = browser.find_elements(By.CSS_SELECTOR, ".tok")[0]
    browser.execute_script("document.querySelector('#views input:checked').focus();")
    # Tab from the view radios onward until a token has focus (the tokens are in the tab order).
    active = browser.switch_to.active_element
    for _ in range(20):
        active.send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        if "tok" in (active.get_attribute("class") or ""):
            break
    assert active == first
    details = browser.find_element(By.ID, "details").text
    assert f"id {first.get_attribute('data-id')}" in details and "reward" in details and "offset" in details


def test_api_error_message_is_shown(browser, server, client):
    if browser.find_element(By.ID, "key-form").is_displayed() or not browser.find_elements(By.ID, "inputs"):
        _open_with_key(browser, server.url)
    _fill(browser, RESPONSES)
    browser.find_element(By.ID, "contrast").click()  # contrast needs messages + a criteria system; none given:
    browser.find_element(By.ID, "system").clear()
    _run(browser)
    browser.find_element(By.ID, "contrast").click()
    err = browser.find_element(By.ID, "error")
    assert err.is_displayed()
    api = client.post(
        "/compare",
        json={
            "messages": [{"role": "user", "content": PROMPT}],
            "responses": RESPONSES,
            "aggregation": "sum",
            "return_tokens": True,
            "contrast": True,
        },
    )
    assert api.status_code >= 400
    assert api.json()["error"]["message"] in err.text


def test_wrong_key_shows_401_and_asks_again(browser, server):
    browser.get(server.url + "/inspect")
    _wait(browser, lambda d: d.find_element(By.ID, "key-form").is_displayed())
    browser.find_element(By.ID, "api-key").send_keys("wrong-key")
    browser.find_element(By.ID, "key-submit").click()
    anon = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer wrong-key"}, timeout=60)
    assert anon.status_code == 401
    _wait(browser, lambda d: anon.json()["error"]["message"] in d.find_element(By.ID, "key-message").text)
    assert browser.find_element(By.ID, "key-form").is_displayed()
    # the key is not persisted anywhere the page can reach after a reload
    assert browser.execute_script("return localStorage.length + sessionStorage.length") == 0
    assert "wrong-key" not in browser.execute_script("return document.cookie")


def _api(url: str, path: str, body: dict) -> dict:
    r = httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=DEADLINE_S)
    assert r.status_code == 200, r.text
    return r.json()


def _score_body(response: str) -> dict:
    """What the page sends for one response (a single user turn, the system, sum, tokens)."""
    item = {"messages": [{"role": "user", "content": PROMPT}], "system": SYSTEM, "response": response}
    return {"items": [item], "aggregation": "sum", "return_tokens": True}


def _compare_body(responses: list[str]) -> dict:
    return {
        "messages": [{"role": "user", "content": PROMPT}],
        "system": SYSTEM,
        "responses": responses,
        "aggregation": "sum",
        "return_tokens": True,
    }


def _clear_result(drv) -> None:
    drv.execute_script(
        "document.getElementById('responses-out').innerHTML = '';document.getElementById('progress').textContent = '';"
    )


def _wait_done(drv) -> None:
    _wait(
        drv,
        lambda d: d.find_element(By.ID, "progress").text == "Done." or d.find_element(By.ID, "error").is_displayed(),
    )
    err = drv.find_element(By.ID, "error")
    assert not err.is_displayed(), err.text


def _tab_to(drv, element_id: str, presses: int = 80) -> None:
    """Tab from the top of the page (nothing focused) until ``element_id`` has focus."""
    drv.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
    for _ in range(presses):
        ActionChains(drv).send_keys(Keys.TAB).perform()
        if drv.switch_to.active_element.get_attribute("id") == element_id:
            return
    raise AssertionError(f"#{element_id} not reached in {presses} Tab presses")


def test_keyboard_tab_to_run_and_enter_or_space_runs_it(browser, server):
    _open_with_key(browser, server.url)
    _fill(browser, RESPONSES)
    api = _api(server.url, "/compare", _compare_body(RESPONSES))
    for key in (Keys.ENTER, Keys.SPACE):
        _clear_result(browser)
        _tab_to(browser, "run")
        ActionChains(browser).send_keys(key).perform()
        _wait_done(browser)
        sections = browser.find_elements(By.CSS_SELECTOR, ".response-out")
        assert [float(s.get_attribute("data-score")) for s in sections] == api["scores"], key
        assert [len(s.find_elements(By.CSS_SELECTOR, ".tok")) for s in sections] == [
            len(r["tokens"]) for r in api["results"]
        ]


# Holds every fetch the page makes until the test calls window.__inspectorRelease(): the request is
# in flight for as long as the test wants, whatever the machine's speed.
HOLD_FETCH = """
const orig = window.fetch;
window.__inspectorOrigFetch = orig;
window.__inspectorHeld = 0;
let gate; const opened = new Promise((r) => { gate = r; });
window.__inspectorRelease = () => gate();
window.fetch = function (...args) {
  window.__inspectorHeld += 1;
  return opened.then(() => orig.apply(this, args));
};
"""


def test_progress_state_while_a_request_is_in_flight_then_the_result(browser, server):
    _open_with_key(browser, server.url)
    _fill(browser, RESPONSES)
    api = _api(server.url, "/compare", _compare_body(RESPONSES))
    _clear_result(browser)
    browser.execute_script(HOLD_FETCH)
    try:
        browser.find_element(By.ID, "run").click()
        _wait(browser, lambda d: d.execute_script("return window.__inspectorHeld") == 1)
        run, cancel, progress = (browser.find_element(By.ID, i) for i in ("run", "cancel", "progress"))
        assert progress.is_displayed() and progress.text.startswith("Scoring")
        assert progress.get_attribute("role") == "status"
        assert not run.is_enabled() and cancel.is_enabled()
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("aria-busy") == "true"
        assert not browser.find_elements(By.CSS_SELECTOR, ".tok")
        # the page stays live while the request is held: its elapsed-time counter keeps ticking
        _wait(browser, lambda d: re.fullmatch(r"Scoring… [1-9]\d* s", d.find_element(By.ID, "progress").text))
        assert not run.is_enabled()
        browser.execute_script("window.__inspectorRelease()")
        _wait_done(browser)
    finally:
        browser.execute_script("if (window.__inspectorOrigFetch) window.fetch = window.__inspectorOrigFetch;")
    assert browser.find_element(By.ID, "run").is_enabled()
    assert not browser.find_element(By.ID, "cancel").is_enabled()
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("aria-busy") is None
    sections = browser.find_elements(By.CSS_SELECTOR, ".response-out")
    assert [float(s.get_attribute("data-score")) for s in sections] == api["scores"]


def _long_response() -> str:
    """About 2010 tokens of the tiny tokenizer: 300 distinct long-ish words, a 200-character run with no
    break opportunity, then short lines (the API's count is what the tests check, not this estimate)."""
    return " ".join(f"word{i}" for i in range(300)) + " " + "x" * 200 + "\n" + "The answer is 5.\n" * 20


# Page geometry in CSS px: the document's scroll width against the viewport, and every visible control or
# token whose box leaves the viewport horizontally, is empty, or (a button) clips its own label.
GEOMETRY = """
const de = document.documentElement, vw = de.clientWidth;
const out = [];
let checked = 0, tokRight = 0;
for (const e of document.querySelectorAll(arguments[0])) {
  if (e.offsetParent === null) continue;  // hidden (the key form once a key is accepted)
  checked += 1;
  const r = e.getBoundingClientRect();
  const clipped = e.tagName === "BUTTON" && e.scrollWidth > e.clientWidth;
  if (r.width <= 0 || r.height <= 0 || r.left < 0 || r.right > vw + 0.5 || clipped)
    out.push([e.id || e.className || e.tagName, r.left, r.right, r.width, clipped]);
}
for (const e of document.querySelectorAll(".tok")) tokRight = Math.max(tokRight, e.getBoundingClientRect().right);
return {scrollWidth: de.scrollWidth, clientWidth: vw, innerWidth: window.innerWidth,
        dpr: window.devicePixelRatio, checked, offending: out, tokRight};
"""
CONTROLS = "#key-form input, #key-form button, #inputs input, #inputs textarea, #inputs select, #inputs button"


def _geometry(drv, selector: str = CONTROLS) -> dict:
    return drv.execute_script(GEOMETRY, selector)


def _score_long_in_page(drv, url: str) -> tuple[dict, int]:
    text = _long_response()
    api = _api(url, "/score", _score_body(text))
    n = api["results"][0]["num_tokens"]
    assert n >= 2000 and len(api["results"][0]["tokens"]) == n, n
    _fill(drv, [text])
    _run(drv)
    err = drv.find_element(By.ID, "error")
    assert not err.is_displayed(), err.text
    sec = drv.find_element(By.CSS_SELECTOR, ".response-out")
    assert float(sec.get_attribute("data-score")) == api["results"][0]["score"]
    assert len(sec.find_elements(By.CSS_SELECTOR, ".tok")) == n  # every token rendered
    return api, n


def test_2000_tokens_wrap_without_horizontal_scroll_at_1280(browser, long_server):
    assert browser.execute_script("return window.innerWidth") == 1280
    _open_with_key(browser, long_server.url)
    _, n = _score_long_in_page(browser, long_server.url)
    g = _geometry(browser)
    print(f"1280 px, {n} tokens:", g)
    assert g["innerWidth"] == 1280
    assert g["scrollWidth"] <= g["clientWidth"] <= g["innerWidth"], g  # no horizontal scroll
    assert g["tokRight"] <= g["clientWidth"], g  # the tokens wrap inside the viewport
    assert g["checked"] and not g["offending"], g


# 200% zoom: browser zoom on a 1280-px window lays the page out in a 640-CSS-px viewport (innerWidth,
# vw units and media queries all see 640) with devicePixelRatio 2; DevTools' device-metrics override
# with width 640 and deviceScaleFactor 2 is exactly that. Not deviceScaleFactor 2 alone (a denser screen,
# same 1280-px layout) and not document.body.style.zoom (CSS zoom scales the body's boxes but leaves the
# viewport, innerWidth, vw and media queries at 1280 px, so it tests a different layout).
ZOOM_200 = {"width": 640, "height": 450, "deviceScaleFactor": 2, "mobile": False}


def test_readable_at_200_percent_zoom(browser, long_server):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", ZOOM_200)
    try:
        browser.get(long_server.url + "/inspect")
        _wait(browser, lambda d: d.find_element(By.ID, "key-form").is_displayed())
        g = _geometry(browser)
        print("200% zoom, key form:", g)
        assert g["innerWidth"] == 640 and g["dpr"] == 2, g
        assert g["scrollWidth"] <= g["clientWidth"], g
        assert g["checked"] >= 2 and not g["offending"], g  # the key field and its button
        _open_with_key(browser, long_server.url)
        g = _geometry(browser)
        print("200% zoom, inputs:", g)
        assert g["scrollWidth"] <= g["clientWidth"], g
        assert g["checked"] and not g["offending"], g
        run = browser.find_element(By.ID, "run").rect
        assert run["width"] > 0 and run["x"] >= 0 and run["x"] + run["width"] <= g["clientWidth"], run
        _, n = _score_long_in_page(browser, long_server.url)
        g = _geometry(browser, CONTROLS + ", #views input, #copy-curl")
        print(f"200% zoom, {n} tokens:", g)
        assert g["scrollWidth"] <= g["clientWidth"], g
        assert g["tokRight"] <= g["clientWidth"], g
        assert g["checked"] and not g["offending"], g
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# Hostile text in every field the page renders: quotes that would close an attribute, markup, event
# handlers. The responses go through the real server (their tokens carry it); the model name, the
# fingerprint and the aggregation are rewritten in the page's copy of the answer (the server's are fixed).
HOSTILE_RESPONSES = [
    'He said "hi" <b>bold</b>\nx" onmouseover="window.__pwned=1" y="\n5',
    "'single' & <img src=x onerror=\"window.__pwned=2\">\n</span><script>window.__pwned=3</script>",
]
HOSTILE_NAME = '"><b id="injected">m</b><span onmouseover="window.__pwned=4" x="'
REWRITE_ANSWERS = """
const name = arguments[0];
const orig = window.fetch;
window.__inspectorOrigFetch = orig;
window.fetch = async function (...args) {
  const r = await orig.apply(this, args);
  if (!/\\/(score|compare)$/.test(String(args[0])) || !r.ok) return r;
  const data = await r.json();
  data.model = name; data.system_fingerprint = name; data.aggregation = name;
  return new Response(JSON.stringify(data), {status: r.status, headers: {"Content-Type": "application/json"}});
};
"""
TOKEN_ATTRIBUTES = {
    "class",
    "tabindex",
    "data-result",
    "data-index",
    "data-id",
    "data-reward",
    "data-logprob",
    "data-shade",
    "data-shade-logprob",
    "aria-label",
    "style",
}


def test_hostile_text_stays_text(browser, server):
    _open_with_key(browser, server.url)
    _fill(browser, HOSTILE_RESPONSES)
    browser.find_element(By.CSS_SELECTOR, "#steps-mode option[value='separator']").click()
    api = _api(server.url, "/compare", {**_compare_body(HOSTILE_RESPONSES), "step_separator": "\n"})
    _clear_result(browser)
    browser.execute_script(REWRITE_ANSWERS, HOSTILE_NAME)
    try:
        browser.find_element(By.ID, "run").click()
        _wait_done(browser)
    finally:
        browser.execute_script("window.fetch = window.__inspectorOrigFetch;")
    browser.find_element(By.CSS_SELECTOR, "#steps-mode option[value='none']").click()
    sections = browser.find_elements(By.CSS_SELECTOR, ".response-out")
    assert len(sections) == 2
    quoted = 0
    for sec, res in zip(sections, api["results"]):
        spans = sec.find_elements(By.CSS_SELECTOR, ".tokens > *")
        assert len(spans) == len(res["tokens"])
        for span, t in zip(spans, res["tokens"]):
            names = set(browser.execute_script("return arguments[0].getAttributeNames()", span))
            assert names == TOKEN_ATTRIBUTES, (t["text"], names)
            assert span.tag_name == "span" and "tok" in span.get_attribute("class").split()
            assert browser.execute_script("return arguments[0].children.length", span) == 0, t["text"]
            assert browser.execute_script("return arguments[0].textContent", span) == t["text"]
            label = span.get_attribute("aria-label")
            head = json.dumps(t["text"], ensure_ascii=False) + " reward "
            assert label.startswith(head), (label, t["text"])
            assert float(label[len(head) :]) == pytest.approx(t["reward"], rel=1e-3, abs=1e-3), label
            quoted += '"' in t["text"]
        steps = sec.find_elements(By.CSS_SELECTOR, "table.steps td.text")
        assert [browser.execute_script("return arguments[0].textContent", td) for td in steps] == [
            s["text"] for s in res["steps"]
        ]
    assert quoted, "no token held a quote: the test would prove little"
    meta = browser.find_element(By.ID, "result-meta")
    assert meta.get_attribute("data-model") == HOSTILE_NAME and meta.get_attribute("data-fingerprint") == HOSTILE_NAME
    assert HOSTILE_NAME in meta.text
    # nothing the text spelled became an element or a handler, and hovering every element runs nothing
    assert not browser.find_elements(By.CSS_SELECTOR, "#results b, #results img, #results script, #injected")
    handlers = browser.execute_script(
        "return [...document.querySelectorAll('*')].flatMap((e) => e.getAttributeNames().filter((n) => n.startsWith('on')))"
    )
    assert handlers == []
    browser.execute_script(
        "document.querySelectorAll('#results *').forEach((e) => e.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})))"
    )
    assert browser.execute_script("return window.__pwned === undefined")
