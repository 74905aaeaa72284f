"""The web page in a real browser: Debian's chromium, headless, driven by selenium through chromium-driver. Type a
prompt, generate, the audio element plays while the music is made, the entry shows in the history; a bad value gets
its error beside its field. Takes a screenshot; with ZHIYIN_UPDATE_SCREENSHOT=1 it becomes docs/serve.png (the
README's), else it stays in the test's own folder, so a test run leaves the checkout as it was."""

import os
import shutil
import time
from pathlib import Path

import pytest
from test_server import Running

from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
from zhiyin.serving.app import Service

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve.png"


@pytest.fixture
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.fail(
            "the page's test needs Debian's chromium and chromium-driver: apt-get install -y chromium "
            "chromium-driver (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=900,1100",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(DRIVER))
    yield driver
    driver.quit()


def wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_page_makes_music_that_plays_while_it_is_made(browser, tiny_checkpoint, tmp_path):
    from selenium.webdriver.common.by import By

    folder = tiny_checkpoint[0]
    model = MusicgenForConditionalGeneration.from_pretrained(folder)
    running = Running(Service(model, MusicgenProcessor.from_pretrained(folder), tmp_path / "data", max_batch=2))
    try:
        browser.get(running.url + "/")
        assert "zhiyin" in browser.title
        # a bad value: its error beside its field, from the server's check
        browser.find_element(By.ID, "prompt").send_keys("lofi hip hop with a warm piano")
        duration = browser.find_element(By.ID, "duration")
        duration.clear()
        duration.send_keys("0")
        browser.find_element(By.ID, "generate").click()
        error = wait(lambda: browser.find_element(By.ID, "error-duration").text)
        assert "duration" in error
        # a good one: it plays while it is made, then shows in the history
        duration.clear()
        duration.send_keys("6")
        browser.find_element(By.ID, "generate").click()
        assert browser.find_element(By.ID, "error-duration").text == ""
        player = "const p = document.getElementById('player'); return [p.paused, p.currentTime, p.src];"
        wait(
            lambda: (lambda paused, now, src: not paused and now > 0 and "/audio" in src)(
                *browser.execute_script(player)
            )
        )
        status = browser.find_element(By.ID, "status").text
        assert status.startswith(("Making", "Done"))
        wait(lambda: "Done" in browser.find_element(By.ID, "status").text, timeout=120)
        entry = wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#history li"))
        assert "lofi hip hop" in entry[0].text and "succeeded" in entry[0].text
        drawn = browser.execute_script(
            "const c = document.getElementById('wave'); const d = c.getContext('2d').getImageData(0, 0, c.width, "
            "c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;"
        )
        assert drawn > 100  # the waveform was drawn as the audio arrived
        picture = SCREENSHOT if os.environ.get("ZHIYIN_UPDATE_SCREENSHOT") == "1" else tmp_path / "serve.png"
        picture.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(picture)) and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        running.stop()
