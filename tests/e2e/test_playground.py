"""The playground page in a real headless Chromium over the shared e2e server (a tiny class-conditional DiT,
8×8 grey images): its controls follow the server's bounds, a generation shows every image and a full progress
bar, compare mode times two plans and measures the PSNR between them as Python does, an edit keeps the
unmasked pixels, the LoRA picker offers the model's adapters, and a refused request shows the server's message.
The embedded text model (digits-flow) gets a server of its own, started in the background while the other tests
run. One browser serves every test."""

from __future__ import annotations

import base64
import io
import math
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from ditserve_testing import save_tiny_dit, save_tiny_lora
from PIL import Image
from server_process import API_KEY, start_server, stop_server

from ditserve.client import RestClient

pytestmark = pytest.mark.e2e

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
WAIT_S = 60
SIDE = 8  # the e2e server's tiny DiT


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "headless Chromium is missing: run `make browser` (Debian chromium + chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium') / 'profile'}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(WAIT_S)
    browser.set_window_size(1280, 1000)
    yield browser
    browser.quit()


TEXT_MODEL = "{name: digits-flow, path: builtin:digits-flow, family: sd3, threads: 1}"


@pytest.fixture(scope="module", autouse=True)
def text_server_starting(tmp_path_factory):
    """A server of the embedded text model, starting on a thread from the module's first test on."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            start_server,
            tmp_path_factory.mktemp("text"),
            model=TEXT_MODEL,
            plan="{sampler: {name: flow-euler, steps: 20}}",
            max_side=16,
            overrides={"sampler": ["flow-euler"], "cache": ["none", "fora"]},
        )
        yield future
        if future.exception() is None:
            stop_server(future.result())


@pytest.fixture
def text_server(text_server_starting):
    return text_server_starting.result(timeout=600)


@pytest.fixture
def page(server, browser):
    return open_page(browser, server, "tiny (dit, class-conditioned")


def open_page(browser, server, described: str):
    """The playground, freshly loaded, with the API key entered and the model's controls filled in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready

    browser.get(f"{server.url}/playground")
    wait(browser).until(ready.text_to_be_present_in_element((By.ID, "model"), "API key"))  # listings need the key
    browser.find_element(By.ID, "key").send_keys(API_KEY)
    wait(browser).until(ready.text_to_be_present_in_element((By.ID, "model"), described))
    wait(browser).until(lambda _: browser.find_elements(By.CSS_SELECTOR, '#cache-b option[value="fora"]'))
    return browser


def wait(browser):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S)


def field(page, id_: str):
    from selenium.webdriver.common.by import By

    return page.find_element(By.ID, id_)


def type_into(page, id_: str, value) -> None:
    element = field(page, id_)
    element.clear()
    element.send_keys(str(value))


def choose(page, id_: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(field(page, id_)).select_by_value(value)


FINISHED = """
const runs = [...document.querySelectorAll(".run")].filter((run) => run.offsetParent !== null);
return !document.getElementById("generate").disabled && (document.getElementById("error").textContent !== "" ||
  runs.every((run) => (run.querySelector(".progress-text") || {}).textContent?.startsWith("100%")));
"""
"""True once the page is idle with an error shown or every visible run at 100%."""


def generate(page) -> None:
    """Click Generate and wait until the run (or both runs) finished or failed."""
    page.execute_script('document.getElementById("error").textContent = ""')
    field(page, "generate").click()
    wait(page).until(lambda _: page.execute_script(FINISHED))


def shown(page, run: str) -> list[str]:
    """The base64 PNGs of the result grid of run "a" or "b"."""
    from selenium.webdriver.common.by import By

    images = page.find_elements(By.CSS_SELECTOR, f"#run-{run} .grid img")
    return [img.get_attribute("src").split(",", 1)[1] for img in images]


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.float64)


def psnr(a: list[str], b: list[str]) -> float:
    """PSNR over the 8-bit RGB values of every image pair, peak 255 (the page's definition)."""
    mse = np.mean([(pixels(x) - pixels(y)) ** 2 for x, y in zip(a, b, strict=True)])
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_the_controls_are_bounded_by_the_servers_limits(server, page):
    bounds = httpx.get(f"{server.url}/models", headers={"authorization": f"Bearer {API_KEY}"}).json()
    bounds = bounds["models"][0]["bounds"]
    assert bounds["steps"] == {"min": 1, "max": 1000, "default": 20}  # the e2e server's limits and plan
    assert bounds["num_images"]["max"] == 4 and bounds["guidance_scale"]["default"] == 4.0
    assert bounds["size"] == {"default": [8, 8], "multiple": 2, "max_side": 8, "resizable": True, "square": True}
    expected = {  # id: (min, max, step, value)
        "steps": ("1", "1000", "1", "20"),
        "num-images": ("1", "4", "1", "1"),
        "guidance": ("0", "100", "0.1", "4"),
        "height": ("2", "8", "2", "8"),
        "width": ("2", "8", "2", "8"),
    }
    for id_, (low, high, step, value) in expected.items():
        element = field(page, id_)
        got = [element.get_attribute(a) for a in ("min", "max", "step")] + [element.get_property("value")]
        assert got == [low, high, step, value], id_
    assert field(page, "width").get_property("readOnly")  # DiT makes square images: width follows height
    labels = [o.text for o in field(page, "label").find_elements("tag name", "option")]
    assert len(labels) == 10 and labels[3] == "3: label3, 3"
    assert field(page, "label").is_displayed() and not field(page, "prompt").is_displayed()  # class-conditioned
    caches = [o.get_attribute("value") for o in field(page, "cache-a").find_elements("tag name", "option")]
    assert caches[0] == "" and sorted(caches[1:]) == ["fora", "none"]  # the plan, what a request may override


def test_a_generation_shows_every_image_and_a_progress_bar_that_reaches_100(rest, page):
    from selenium.webdriver.common.by import By

    choose(page, "label", "3")
    for id_, value in {"steps": 10, "num-images": 3, "guidance": 2.5, "seed": 11, "preview": 5}.items():
        type_into(page, id_, value)
    generate(page)
    assert field(page, "error").text == ""
    images = page.find_elements(By.CSS_SELECTOR, "#run-a .grid img")
    assert len(images) == 3
    for img in images:
        assert page.execute_script("return arguments[0].naturalWidth", img) == SIDE
        assert img.size["width"] >= 8 * SIDE  # upscaled…
        assert img.value_of_css_property("image-rendering") == "pixelated"  # …as pixels
    bar = page.find_element(By.CSS_SELECTOR, "#run-a progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "10"
    assert "100%" in page.find_element(By.CSS_SELECTOR, "#run-a .progress-text").text
    assert len(page.find_elements(By.CSS_SELECTOR, "#run-a .strip img")) == 2  # previews at steps 5 and 10
    # the page sent what its controls say: the same request from Python gives the same images
    same = rest.generate(class_label=3, steps=10, num_images=3, guidance_scale=2.5, seed=11, height=8, width=8)
    assert shown(page, "a") == [base64.b64encode(i["data"]).decode() for i in same["images"]]
    assert not page.find_element(By.ID, "run-b").is_displayed()


def test_compare_mode_times_two_plans_and_measures_the_psnr_python_measures(rest, page):
    from selenium.webdriver.common.by import By

    field(page, "mode-compare").click()
    choose(page, "label", "5")
    for id_, value in {"steps": 30, "num-images": 2, "seed": 3, "preview": 0}.items():
        type_into(page, id_, value)
    choose(page, "cache-a", "none")
    choose(page, "cache-b", "fora")
    generate(page)
    assert field(page, "error").text == ""
    assert field(page, "comparison").is_displayed()
    a, b = shown(page, "a"), shown(page, "b")
    assert len(a) == len(b) == 2
    seconds = []
    for run in "ab":
        stats = page.find_element(By.CSS_SELECTOR, f"#run-{run} .stats").text
        match = re.search(r"([\d.]+) s on the server, ([\d.]+) s round trip", stats)
        assert match, stats
        seconds.append(float(match.group(1)))
    computed = re.search(r"(\d+) of 60 blocks", page.find_element(By.CSS_SELECTOR, "#run-b .stats").text)
    assert computed and int(computed.group(1)) < 60  # fora skipped blocks
    speedup = float(field(page, "speedup").text.rstrip("×"))
    assert speedup == pytest.approx(seconds[0] / seconds[1], rel=0.05, abs=0.01)
    shown_db = float(re.fullmatch(r"([\d.]+) dB", field(page, "psnr").text).group(1))
    fields = {"class_label": 5, "steps": 30, "num_images": 2, "seed": 3}
    none, fora = (rest.generate(**fields, cache={"name": name})["images"] for name in ("none", "fora"))
    expected = psnr(*([base64.b64encode(i["data"]).decode() for i in run] for run in (none, fora)))
    assert abs(shown_db - expected) < 0.1 and 10 < expected < 100


def test_compare_with_identical_plans_says_identical(page):
    field(page, "mode-compare").click()
    choose(page, "label", "1")
    type_into(page, "steps", 4)
    choose(page, "cache-a", "")
    choose(page, "cache-b", "")
    generate(page)
    assert field(page, "psnr").text == "identical (∞ dB)"
    assert shown(page, "a") == shown(page, "b")


def masked_edit_keeps_the_rest(init: str, edited: str, generated: np.ndarray) -> None:
    """`edited` equals `init` wherever `generated` (an (H, W) bool mask) is false, and differs inside it."""
    before, after = pixels(init), pixels(edited)
    assert np.array_equal(after[~generated], before[~generated])
    assert np.abs(after[generated] - before[generated]).mean() > 10


def test_an_edit_of_a_result_with_a_drawn_mask_keeps_the_unmasked_pixels(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    choose(page, "label", "3")
    type_into(page, "steps", 6)
    generate(page)
    init = shown(page, "a")[0]
    page.find_element(By.CSS_SELECTOR, "#run-a .grid button.use").click()
    canvas = field(page, "mask-canvas")
    wait(page).until(lambda _: canvas.is_displayed())
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)  # actions aim at its visible part
    cell = canvas.size["width"] / SIDE  # drag from column 5, row 1 to column 6, row 6 (offsets from the centre)
    offset = lambda column: (column + 0.5) * cell - canvas.size["width"] / 2  # noqa: E731
    ActionChains(page).move_to_element_with_offset(canvas, offset(5), offset(1)).click_and_hold().move_by_offset(
        cell, 5 * cell
    ).release().perform()
    assert field(page, "mask-preset").get_property("value") == "drawn"
    choose(page, "label", "7")
    generate(page)
    assert field(page, "error").text == ""
    generated = np.zeros((SIDE, SIDE), bool)
    generated[1:7, 5:7] = True
    masked_edit_keeps_the_rest(init, shown(page, "a")[0], generated)


def test_an_uploaded_init_image_with_a_preset_mask_keeps_the_other_half(page, tmp_path):
    upload = tmp_path / "init.png"
    Image.fromarray(((np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 4) % 256).astype(np.uint8), "L").save(upload)
    field(page, "init-file").send_keys(str(upload))
    wait(page).until(lambda _: field(page, "mask-canvas").is_displayed())
    choose(page, "mask-preset", "left")
    choose(page, "label", "2")
    type_into(page, "steps", 5)
    generate(page)
    assert field(page, "error").text == ""
    generated = np.zeros((SIDE, SIDE), bool)
    generated[:, : SIDE // 2] = True
    masked_edit_keeps_the_rest(base64.b64encode(upload.read_bytes()).decode(), shown(page, "a")[0], generated)


def test_a_refused_request_shows_the_servers_message(page):
    type_into(page, "steps", 5000)
    generate(page)
    assert field(page, "error").text == "400 invalid: steps: must be at most 1000 (got 5000)"
    assert shown(page, "a") == []


def test_a_text_model_takes_a_free_prompt_and_the_sizes_it_allows(text_server, browser):
    page = open_page(browser, text_server, "digits-flow (sd3, text-conditioned")
    assert field(page, "prompt").is_displayed() and not field(page, "label").is_displayed()
    assert field(page, "height").get_attribute("max") == "16" and not field(page, "width").get_property("readOnly")
    field(page, "prompt").send_keys("a handwritten seven")
    for id_, value in {"steps": 8, "num-images": 2, "seed": 4, "height": 16, "width": 12}.items():
        type_into(page, id_, value)
    generate(page)
    assert field(page, "error").text == ""
    images = shown(page, "a")
    assert [pixels(b64).shape for b64 in images] == [(16, 12, 3)] * 2
    rest = RestClient(text_server.url, API_KEY)
    try:
        same = rest.generate(prompt="a handwritten seven", steps=8, num_images=2, seed=4, height=16, width=12)
    finally:
        rest.close()
    assert images == [base64.b64encode(i["data"]).decode() for i in same["images"]]


@pytest.fixture
def lora_server(tmp_path):
    """A server whose tiny DiT has one adapter, `ink` (the shared server's model has none)."""
    save_tiny_lora(save_tiny_dit(tmp_path / "tiny"), "ink")  # start_server writes the same tiny DiT again
    current = start_server(tmp_path)
    yield current
    stop_server(current)


def test_the_lora_picker_offers_the_models_adapters_and_sends_the_chosen_one(server, browser, lora_server):
    page = open_page(browser, server, "tiny (dit, class-conditioned")
    assert not field(page, "lora").is_displayed()  # a model without adapters shows no picker
    page = open_page(browser, lora_server, "tiny (dit, class-conditioned")
    adapters = [o.get_attribute("value") for o in field(page, "lora").find_elements("tag name", "option")]
    assert adapters == ["", "ink"] and field(page, "lora").is_displayed()
    choose(page, "label", "3")
    for id_, value in {"steps": 6, "seed": 5, "lora-scale": 0.5}.items():
        type_into(page, id_, value)
    choose(page, "lora", "ink")
    generate(page)
    assert field(page, "error").text == ""
    rest = RestClient(lora_server.url, API_KEY)
    try:
        request = {"class_label": 3, "steps": 6, "seed": 5, "height": 8, "width": 8}
        inked, plain = rest.generate(**request, lora="ink", lora_scale=0.5), rest.generate(**request)
    finally:
        rest.close()
    as_shown = [base64.b64encode(i["data"]).decode() for i in inked["images"]]
    assert shown(page, "a") == as_shown != [base64.b64encode(i["data"]).decode() for i in plain["images"]]


def test_a_full_queue_shows_the_429_and_what_to_do(rest, page):
    ids = [rest.submit(class_label=2, seed=s, steps=1000) for s in range(3)]  # the queue holds 3
    try:
        generate(page)
        error = field(page, "error").text
    finally:
        for task in ids:  # answered once the work stopped: the next test finds the queue empty
            rest.cancel(task)
    assert error.startswith("429 queue_full: ") and error.endswith("The server's queue is full; try again in a moment.")
