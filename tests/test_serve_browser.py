"""The page of `videosys serve` in headless Chromium (Debian's chromium and chromium-driver, via selenium):
give the API key, type a prompt, press Generate, watch the video load (fetched with the key); then compare two
jobs side by side."""

import os
import socket
import threading
import time

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip("selenium")
pytest.importorskip("uvicorn")

import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from videosys import LatteConfig  # noqa: E402
from videosys.core.engine import VideoSysEngine  # noqa: E402
from videosys.serve.app import create_app  # noqa: E402

PROMPT = "a red circle moving to the right"
KEY = "page-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = VideoSysEngine(LatteConfig(preset="demo", progress_bar=False, num_inference_steps=20))
    app = create_app(engine, str(tmp_path_factory.mktemp("serve")), api_key=KEY)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)
    engine.shutdown()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1200", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def video_state(driver, element_id: str) -> dict:
    return driver.execute_script(
        "const v = document.getElementById(arguments[0]);"
        "return {ready: v.readyState, width: v.videoWidth, height: v.videoHeight, duration: v.duration,"
        " error: v.error && v.error.code, src: v.currentSrc};", element_id)


def wait_for_video(driver, element_id: str, timeout: float = 60) -> dict:
    """Until the element has decoded its first frame (readyState >= HAVE_CURRENT_DATA)."""
    WebDriverWait(driver, timeout).until(
        lambda d: video_state(d, element_id)["ready"] >= 2 or video_state(d, element_id)["error"])
    return video_state(driver, element_id)


def generate(driver, prompt: str, cache: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    Select(driver.find_element(By.ID, "cache")).select_by_visible_text(cache)
    driver.find_element(By.ID, "submit").click()


def test_page_generates_and_plays_the_video(server, browser, tmp_path):
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda d: "401" in d.find_element(By.ID, "error").text)  # the key is needed
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    fields = WebDriverWait(browser, 30).until(
        lambda d: {i.get_attribute("name"): i.get_attribute("value")
                   for i in d.find_elements(By.CSS_SELECTOR, "#fields input")} or None)
    assert fields["num_inference_steps"] == "20" and fields["num_frames"] == "16"  # the config's defaults
    caches = [o.text for o in Select(browser.find_element(By.ID, "cache")).options]
    assert caches[:4] == ["none", "teacache-slow", "teacache-fast", "pab"]

    generate(browser, PROMPT, "none")
    state = wait_for_video(browser, "result")
    assert state["error"] is None and (state["width"], state["height"]) == (64, 64), state
    assert state["duration"] == pytest.approx(16 / 8, abs=0.2)  # 16 frames at 8 fps
    progress = browser.find_element(By.ID, "progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "20"
    assert "completed: step 20/20" in browser.find_element(By.ID, "progress-text").text
    time.sleep(0.5)  # let the video play a few frames before the picture
    browser.save_screenshot(str(tmp_path / "generated.png"))

    # a second job with PAB, then both side by side with their timings and the PSNR between them
    generate(browser, PROMPT, "pab")
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr td.state-completed")) == 2)
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    rows[1].find_element(By.CSS_SELECTOR, "input[name=pick-a]").click()  # newest first: [1] is the uncached
    rows[0].find_element(By.CSS_SELECTOR, "input[name=pick-b]").click()
    WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "compare")))
    for slot in ("compare-a", "compare-b"):
        assert wait_for_video(browser, slot)["width"] == 64
    psnr = browser.find_element(By.ID, "psnr").text
    assert psnr.startswith("PSNR ") and 10 < float(psnr.split()[1]) < 100, psnr
    assert "cache none" in browser.find_element(By.ID, "caption-a").text
    caption_b = browser.find_element(By.ID, "caption-b").text
    assert "cache pab" in caption_b and "pab reused" in caption_b and "total " in caption_b
    browser.execute_script("document.getElementById('compare').scrollIntoView({block: 'end'})")
    time.sleep(0.5)
    browser.save_screenshot(str(tmp_path / "compare.png"))
