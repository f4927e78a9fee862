"""The reward inspector (GET /inspect) in a real headless Chromium against a live ``endorm serve``.

The page's tokens, their shading values and the scores must be exactly the API's for the same
request (made again here with httpx); the auth path; an API error shown as the API's message; no
horizontal scroll at 1280 px; keyboard focus on a token shows its details.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import API_KEY

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEADLINE_S = 300  # polling deadline (a state, not a speed)

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

PROMPT = "What is 2+3?"
SYSTEM = "Answer with digits only."
RESPONSES = ["5", "The answer is six."]


def _skip_reason() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, DRIVER):
        if not shutil.which(path):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    reason = _skip_reason()
    if reason:
        print("SKIP:", reason)
        pytest.skip(reason)
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
    max_abs = max(abs(t["reward"]) for r in api["results"] for t in r["tokens"])
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
            assert float(el.get_attribute("data-shade")) == t["reward"] / max_abs
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


def test_no_horizontal_scroll_at_1280_with_a_long_response(browser, server):
    _open_with_key(browser, server.url)
    # long words and an unbroken run, within the tiny server's 512-token context
    long = " ".join(f"word{i}" for i in range(40)) + " " + "x" * 200
    _fill(browser, [long])
    _run(browser)
    err = browser.find_element(By.ID, "error")
    assert not err.is_displayed(), err.text
    assert browser.find_elements(By.CSS_SELECTOR, ".tok")
    width = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], width
