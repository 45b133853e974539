"""The playground page in a real headless Chromium: type a prompt, click Generate, an image appears."""

from __future__ import annotations

import re
import shutil

import pytest
from server_process import API_KEY

pytestmark = pytest.mark.e2e

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "headless Chromium is missing: run `make browser` (Debian chromium + chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


def test_generate_shows_previews_and_the_image(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"{server.url}/playground")
    wait = WebDriverWait(browser, 60)
    wait.until(ready.text_to_be_present_in_element((By.ID, "model"), "API key"))  # listings need the key
    browser.find_element(By.ID, "key").send_keys(API_KEY)
    wait.until(ready.text_to_be_present_in_element((By.ID, "model"), "tiny"))
    browser.find_element(By.ID, "prompt").send_keys("label3")
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("30")
    preview = browser.find_element(By.ID, "preview")
    preview.clear()
    preview.send_keys("15")
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, '#cache option[value="fora"]'))
    Select(browser.find_element(By.ID, "cache")).select_by_value("fora")  # the server allows none and fora
    browser.find_element(By.ID, "generate").click()
    image = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#result img.result")))
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 8
    assert len(browser.find_elements(By.CSS_SELECTOR, "#previews img")) == 2  # steps 15 and 30
    progress = browser.find_element(By.ID, "progress").text
    computed = re.search(r"(\d+) of 60 blocks computed", progress)
    assert "step 30 / 30" in progress and computed and int(computed.group(1)) < 60  # fora ran and skipped
    assert browser.find_element(By.ID, "error").text == ""
