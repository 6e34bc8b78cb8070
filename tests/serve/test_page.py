"""The page at ``/`` in headless Chromium (Debian's ``chromium`` and ``chromium-driver``): type a
digit, press the button, the progress bar moves, the image appears with its rounds and latency,
and it is the image the API gives for the same request."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driffusion.serve.client import request as http
from tests.support import in_process_server

pytestmark = pytest.mark.processes  # chromedriver and chromium are processes

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromedriver")


def install_chromium() -> str | None:
    """Install Debian's Chromium and its driver when they are missing; the reason when they
    cannot be had."""
    if all(Path(p).exists() for p in CHROMIUM):
        return None
    apt = shutil.which("apt-get")
    if apt is None:
        return "Chromium is not installed and there is no apt-get to install it"
    command = [apt, "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run([apt, "update"], capture_output=True, timeout=600)
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or not all(Path(p).exists() for p in CHROMIUM):
        return f"`apt-get install chromium chromium-driver` failed: {result.stderr[-500:]}"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = install_chromium()
    if reason is not None:
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM[0]
    profile = tmp_path_factory.mktemp("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMIUM[1])
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with in_process_server(tmp_path_factory.mktemp("serve")) as (_, front):
        yield front.url


def test_the_page_shows_the_image_with_its_rounds_and_a_moving_progress_bar(
    browser: Any, server: str
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    deadline = time.monotonic() + 30
    while browser.find_element(By.ID, "sampler").get_attribute("value") == "":  # /info read
        assert time.monotonic() < deadline, "the page did not read /info"
        time.sleep(0.05)
    assert "digits" in browser.find_element(By.ID, "meta").text
    browser.find_element(By.ID, "prompt").send_keys("3")
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("400")
    browser.find_element(By.ID, "go").click()
    seen: list[float] = []
    deadline = time.monotonic() + 120
    while not browser.find_elements(By.CSS_SELECTOR, "#result img"):
        assert time.monotonic() < deadline, browser.find_element(By.ID, "error").text
        seen.append(float(browser.find_element(By.ID, "bar").get_attribute("value")))
        time.sleep(0.05)
    assert any(0 < value < 1 for value in seen), "the progress bar never moved between 0 and 1"
    assert seen == sorted(seen)  # it only goes forward
    image = browser.find_element(By.CSS_SELECTOR, "#result img")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 16
    stats = browser.find_element(By.ID, "stats").text
    assert "rounds for 400 steps" in stats and " s (" in stats, stats
    assert float(browser.find_element(By.ID, "bar").get_attribute("value")) == 1
    # the page's image is the API's for the same request
    _, answer = http(
        "POST", f"{server}/v1/images/generations", {"prompt": "3", "steps": 400, "seed": 0}
    )
    assert image.get_attribute("src") == "data:image/png;base64," + answer["data"][0]["b64_json"]


def test_the_page_shows_a_refused_request(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    browser.find_element(By.ID, "prompt").send_keys("eleven")
    browser.find_element(By.ID, "go").click()
    deadline = time.monotonic() + 30
    while not browser.find_element(By.ID, "error").text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "prompt" in browser.find_element(By.ID, "error").text
