"""The web page in a real browser: headless Chromium (Debian's chromium + chromedriver, driven by selenium;
no downloaded browser build) loads the page from a server started here, submits a prompt, sees the
tokens arrive while they stream, and the colour strip drawn with values on hover; a music model's
page shows the composer and instruments, a piano roll and a MIDI download. Screenshots are saved.

`make test` installs Chromium when it is missing (`make browser`, as root with apt-get); without it
these tests are skipped with a message.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from serve_fake_midi import FakeMidiTokenizer
from serve_helpers import post, served, served_model

import lmlab

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev extra: pip install -e .[dev]")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                 reason="no Chromium here: `make browser` installs Debian's chromium and "
                                        "chromium-driver (needs root and apt-get)")]
# Where the screenshots go: $LMLAB_SCREENSHOTS, else the test's temporary folder.
SHOTS = os.environ.get("LMLAB_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    # The flags that keep Chromium off the network and working as root in a container.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1100,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver, tmp_path, name: str) -> Path:
    folder = Path(SHOTS) if SHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a picture, not an empty page
    return path


def until(driver, condition, timeout: float = 30, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.02)
    return wait.until(lambda d: condition(d), f"waiting for {what}")


def slow_steps(engine, seconds: float):
    step = engine.batch.step

    def slow(feed):
        time.sleep(seconds)
        return step(feed)

    engine.batch.step = slow


def test_the_page_streams_and_colours_the_tokens(browser, gpt2_chars_dir, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with served(gpt2_chars_dir) as (url, app):
        slow_steps(app.state.served.engine, 0.03)  # slow enough to watch the tokens come in
        browser.get(url + "/")
        until(browser, lambda d: d.find_element(By.ID, "model").text.startswith("tiny:"), what="the card")
        assert "gpt2 (causal_lm, state kv_cache)" in browser.find_element(By.ID, "model").text
        assert not browser.find_element(By.ID, "music").is_displayed()
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("the cat")
        for field, value in (("max-tokens", "40"), ("temperature", "0.9"), ("seed", "7")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "generate").click()

        seen = set()  # the continuation's lengths while it streams
        status = browser.find_element(By.ID, "status")
        deadline = time.monotonic() + 30
        while not status.text.startswith(("done", "error")) and time.monotonic() < deadline:
            seen.add(len(browser.find_element(By.ID, "out-new").text))
            time.sleep(0.02)
        assert status.text.startswith("done"), status.text
        text = browser.execute_script("return document.getElementById('out-new').textContent")
        assert len([n for n in seen if 0 < n < len(text)]) >= 3  # tokens arrived one by one, not at the end
        chunks = int(browser.find_element(By.ID, "output").get_attribute("data-chunks"))
        assert chunks > 5

        # The same request through the API gives the same text (temperature 0.9, seed 7).
        out = post(url + "/v1/completions", {"prompt": "the cat", "max_tokens": 40, "temperature": 0.9,
                                              "top_k": 40, "top_p": 1, "seed": 7})[1]
        assert text == out["choices"][0]["text"]

        tokens = browser.find_elements(By.CSS_SELECTOR, "#strip .tok")
        scored = post(url + "/v1/inspect", {"prompt": "the cat", "text": text})[1]
        assert len(tokens) == len(scored["tokens"]) > 10  # one span per token of prompt + continuation
        assert "".join(t.get_attribute("textContent") for t in tokens) == "the cat" + text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#strip .tok.prompt")) == 7
        values = [t.get_attribute("data-value") for t in tokens]
        assert values[0] == ""
        assert [float(v) for v in values[1:]] == pytest.approx(scored["loss"][1:], abs=1e-9)
        colours = {t.value_of_css_property("background-color") for t in tokens[1:]}
        assert len(colours) > 5  # coloured by value, not one colour
        target = next(t for t in tokens[8:] if t.get_attribute("textContent").strip())  # a visible one
        ActionChains(browser).move_to_element(target).perform()
        until(browser, lambda d: "loss" in d.find_element(By.ID, "hover").text, what="the hover values")
        hover = browser.find_element(By.ID, "hover").text
        assert "entropy" in hover and "rank" in hover and target.get_attribute("title") == hover
        backgrounds = ("return [...document.querySelectorAll('#strip .tok')]"
                       ".map((t) => getComputedStyle(t).backgroundColor)")
        by_loss = browser.execute_script(backgrounds)
        Select(browser.find_element(By.ID, "color-by")).select_by_value("entropy")  # the strip is redrawn
        by_entropy = browser.execute_script(backgrounds)
        assert len(by_entropy) == len(by_loss) and by_entropy != by_loss
        Select(browser.find_element(By.ID, "color-by")).select_by_value("loss")
        target = browser.find_elements(By.CSS_SELECTOR, "#strip .tok")[tokens.index(target)]
        ActionChains(browser).move_to_element(target).perform()
        path = shot(browser, tmp_path, "serve-page.png")
        print(f"screenshot: {path}")
        logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert logs == []  # no JavaScript error, no failed fetch


def test_the_page_of_a_music_model(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    tok = FakeMidiTokenizer()
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=tok.vocab_size, init_std=0.4)
    with served_model(model, tok, name="music-tiny") as (url, _):
        browser.get(url + "/")
        until(browser, lambda d: d.find_element(By.ID, "music").is_displayed(), what="the music controls")
        assert not browser.find_element(By.ID, "prompt-box").is_displayed()
        Select(browser.find_element(By.ID, "composer")).select_by_value("bach")
        browser.find_element(By.ID, "generate").click()
        until(browser, lambda d: d.find_element(By.ID, "status").text.startswith("done"), what="the music")
        assert browser.find_element(By.ID, "out-prompt").text.startswith("composer:bach instrument:")
        notes = int(browser.find_element(By.ID, "roll").get_attribute("data-notes"))
        assert notes > 0
        link = browser.find_element(By.ID, "midi-download")
        assert link.is_displayed() and link.get_attribute("href").startswith("blob:")
        painted = browser.execute_script(
            "const c = document.getElementById('roll'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;")
        assert painted > 100  # the piano roll is drawn
        shot(browser, tmp_path, "serve-music.png")
