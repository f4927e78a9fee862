"""The screenshots in docs/images (docs/inspector.md), taken by the browser harness of
test_inspector.py against ``endorm serve`` of the default model, SmolLM2-135M-Instruct:

    .venv/bin/python -m pytest -q -s -m slow tests/browser/test_screenshots.py

Slow (a real model's engine start), so outside ``make test``. Besides writing the images, it checks
what they are for: the response's tokens are not washed out by the end-of-turn token's reward
(most of them carry a visible shade), and the page lays out in two columns at 1400 px.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.bench.grpo import default_model
from tests.browser.test_inspector import API_KEY, By, _open_with_key, _run, _wait, browser  # noqa: F401
from tests.server import ServerProcess

pytestmark = pytest.mark.slow
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WIDTH = 1400


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Iterator[ServerProcess]:
    args = ["--model", str(default_model()), "--api-key", API_KEY, "--max-model-len", "2048"]
    args += ["--kv-cache-gb", "0.5", "--enforce-eager", "--request-timeout-s", "600"]
    proc = ServerProcess(args, log_path=tmp_path_factory.mktemp("screenshots") / "server.log").start()
    try:
        yield proc
    finally:
        proc.stop()


def _fill(drv, prompt: str, responses: list[str], *, separator: str | None = None) -> None:
    drv.find_element(By.ID, "prompt").clear()
    drv.find_element(By.ID, "prompt").send_keys(prompt)
    drv.find_element(By.ID, "system").clear()
    while len(drv.find_elements(By.CSS_SELECTOR, "textarea.response")) < len(responses):
        drv.find_element(By.ID, "add-response").click()
    for extra in drv.find_elements(By.CSS_SELECTOR, ".response-in")[len(responses) :]:
        extra.find_element(By.CSS_SELECTOR, "button.remove").click()
    for box, text in zip(drv.find_elements(By.CSS_SELECTOR, "textarea.response"), responses):
        drv.execute_script("arguments[0].value = arguments[1];", box, text)
    mode = "separator" if separator is not None else "none"
    drv.execute_script("document.getElementById('steps-mode').value = arguments[0];", mode)
    if separator is not None:
        drv.execute_script("document.getElementById('separator').value = arguments[0];", separator)


def _shot(drv, name: str) -> Path:
    height = drv.execute_script(
        "return Math.max(document.documentElement.scrollHeight, document.getElementById('inputs').scrollHeight + 80)"
    )
    drv.set_window_size(WIDTH, max(700, min(int(height) + 40, 2400)))
    drv.execute_script(
        "document.activeElement.blur(); window.scrollTo(0, 0); document.getElementById('inputs').scrollTop = 0;"
    )
    path = IMAGES / name
    drv.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    print(f"wrote {path}")
    return path


def _visible_shades(drv) -> float:
    """The fraction of tokens, each response's last left out, whose shade is at least 0.2 of the scale."""
    shades = drv.execute_script(
        "return [...document.querySelectorAll('.tokens')].flatMap((t) =>"
        " [...t.querySelectorAll('.tok')].slice(0, -1).map((e) => Math.abs(parseFloat(e.dataset.shade))));"
    )
    return sum(s >= 0.2 for s in shades) / len(shades)


def test_docs_screenshots(browser, smollm2):  # noqa: F811
    browser.set_window_size(WIDTH, 900)
    _open_with_key(browser, smollm2.url)
    _fill(browser, "What is 12 * 3? Answer briefly.", ["12 * 3 = 36.", "12 * 3 = 38."])
    _run(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    inputs, results = browser.find_element(By.ID, "inputs"), browser.find_element(By.ID, "results")
    assert inputs.rect["x"] + inputs.rect["width"] <= results.rect["x"], "not two columns at 1400 px"
    assert _visible_shades(browser) >= 0.5, "the response's tokens are washed out"
    _shot(browser, "inspector-right-vs-wrong.png")

    question = "A shop sells pens at 3 dollars each. Tom buys 4 pens and pays with a 20 dollar bill. How much change?"
    right = "4 pens cost 4 * 3 = 12 dollars.\nThe change is 20 - 12 = 8 dollars.\nThe answer is 8."
    wrong = "4 pens cost 4 * 3 = 12 dollars.\nThe change is 20 - 12 = 6 dollars.\nThe answer is 6."
    browser.set_window_size(WIDTH, 900)
    _fill(browser, question, [wrong, right], separator="\\n")
    _run(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.steps"))
    steps = [
        [float(row.get_attribute("data-reward")) for row in table.find_elements(By.CSS_SELECTOR, "tr[data-step]")]
        for table in browser.find_elements(By.CSS_SELECTOR, "table.steps")
    ]
    print(f"step rewards (wrong, right): {steps}")
    _shot(browser, "inspector-steps.png")
