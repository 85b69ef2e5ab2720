"""The page at `/`: its strict headers in-process, and what a person does there in the system's
headless Chromium (Selenium, the Debian chromedriver; nothing is downloaded). One browser and one
`df serve` (fake runner, SQLite) serve every browser test of this module.

Without Chromium and chromedriver the browser tests skip outside CI and fail in CI.
DF_WEB_SCREENSHOTS=DIR also writes the screenshots there (docs/screenshots in the repository)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from dreamforge.server.app import create_app
from dreamforge.server.web import CSP, STATIC
from dreamforge.settings import Settings
from tests.conftest import IN_CI, df_command
from tests.servers import free_port, wait_healthy

CHROMIUM = os.environ.get("DF_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DF_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = "web-test-token-0123456789"
XSS = "<img src=x onerror=alert(1)>"


# -- in-process: headers and the files ------------------------------------------------------------

@pytest.fixture
def page_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    for name in list(os.environ):
        if name.startswith("DF_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DF_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def make(token: str | None = None) -> TestClient:
        kw: dict[str, Any] = {"api_token": token} if token else {}
        return TestClient(create_app(Settings(**kw)))  # no lifespan: no backend touched

    yield make


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/app.css", "/static/nope.js"])
def test_page_and_its_files_carry_strict_headers(page_app, path: str) -> None:
    """Every page response, a static 404 included, forbids inline script and framing."""
    r = page_app().get(path)
    assert r.status_code == (404 if "nope" in path else 200)
    assert r.headers["content-security-policy"] == CSP
    assert "frame-ancestors 'none'" in CSP and "script-src 'self';" in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    if path.endswith(".js") and r.status_code == 200:
        assert r.headers["content-type"].startswith("text/javascript")  # module scripts need it


def test_page_has_no_inline_script_or_style_and_stays_small() -> None:
    html = (STATIC / "index.html").read_text()
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert not re.search(r"\son\w+=", html) and " style=" not in html and "<style" not in html
    assert not re.search(r"https?://", html)  # nothing fetched from elsewhere
    weight = sum((STATIC / n).stat().st_size for n in ("index.html", "app.js", "app.css"))
    assert weight < 60_000, weight


def test_page_is_open_but_the_api_wants_the_token(page_app) -> None:
    client = page_app(TOKEN)
    page = client.get("/")
    assert page.status_code == 200 and 'data-auth="token"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/v1/jobs").status_code == 401
    assert 'data-auth="none"' in page_app().get("/").text


# -- the browser (one per xdist worker: run with --dist loadgroup to keep them on one) -----------

BROWSER = pytest.mark.xdist_group("browser")

def need_browser(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"a browser is required in CI: {reason}")
    pytest.skip(f"no browser: {reason}")


class WebServer:
    def __init__(self, root: Path, **extra: str):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DF_")}
        env.update(DF_DATA_DIR=str(root / "data"), DF_FAKE_RUNNER="1", DF_FAKE_STEP_DELAY_S="0.05",
                   DF_HEARTBEAT_INTERVAL_S="0.5", DF_WORKER_TIMEOUT_S="5", **extra)
        self.log_path = root / "serve.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(df_command("serve", "--port", str(self.port)), env=env, cwd=root,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.proc, self.log_path)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._log.close()


@pytest.fixture(scope="module")
def driver() -> Iterator:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        need_browser(f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need_browser("selenium is not installed")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-color-profile=srgb", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    d.execute_cdp_cmd("Emulation.setEmulatedMedia",
                      {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
    yield d
    d.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    s = WebServer(tmp_path_factory.mktemp("web"))
    yield s
    s.stop()


@pytest.fixture
def page(driver, server):
    """The gallery, freshly loaded; after the test, the console has no errors."""
    driver.set_window_size(1280, 900)
    driver.get(server.url + "/")
    wait(driver, lambda d: d.find_element("id", "app").is_displayed())
    driver.get_log("browser")  # start clean
    yield driver
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def wait(driver, check, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)


def submit(driver, prompt: str, steps: int = 40, size: int = 256) -> str:
    """Fills the form by keyboard and presses Enter; returns the new job's id."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    before = {li.get_attribute("data-id") for li in driver.find_elements("css selector", "#gallery li")}
    prompt_box = driver.find_element("id", "f-prompt")
    prompt_box.clear()
    prompt_box.send_keys(prompt)
    Select(driver.find_element("id", "f-size")).select_by_value("custom")
    for name, value in (("width", size), ("height", size), ("steps", steps)):
        box = driver.find_element("id", f"f-{name}")
        box.clear()
        box.send_keys(str(value))
    box.send_keys(Keys.ENTER)
    return wait(driver, lambda d: next(
        (li.get_attribute("data-id") for li in d.find_elements("css selector", "#gallery li")
         if li.get_attribute("data-id") not in before), None))


def card(driver, job_id: str):
    return driver.find_element("css selector", f'#gallery li[data-id="{job_id}"]')


def thumbnail_shown(driver, job_id: str) -> bool:
    return driver.execute_script(
        "const i = document.querySelector(`#gallery li[data-id='${arguments[0]}'] img`);"
        "return !!i && i.complete && i.naturalWidth > 0;", job_id)


@BROWSER
def test_submit_watch_progress_and_thumbnail(page, server) -> None:
    job_id = submit(page, "a lighthouse in a storm", steps=40)
    bar = card(page, job_id).find_element("css selector", "progress")
    seen: set[float] = set()
    deadline = time.monotonic() + 20
    while card(page, job_id).get_attribute("data-status") != "succeeded" and time.monotonic() < deadline:
        if bar.is_displayed():
            seen.add(float(bar.get_attribute("value")))
        time.sleep(0.03)
    assert card(page, job_id).get_attribute("data-status") == "succeeded"
    assert any(0 < v < 40 for v in seen), f"progress never moved between 0 and 40: {sorted(seen)}"
    wait(page, lambda d: thumbnail_shown(d, job_id))


@BROWSER
def test_api_error_shows_beside_its_field(page) -> None:
    """A whitespace-only prompt passes the form's own checks; the API's message lands beside it."""
    from selenium.webdriver.common.keys import Keys

    box = page.find_element("id", "f-prompt")
    box.clear()
    box.send_keys("   ")
    page.find_element("id", "f-steps").send_keys(Keys.ENTER)
    message = wait(page, lambda d: d.find_element("id", "e-prompt").text)
    assert "prompt" in message
    assert box.get_attribute("aria-invalid") == "true"
    # The form's own limits, before any request: steps outside 1-150.
    steps = page.find_element("id", "f-steps")
    steps.clear()
    steps.send_keys("151", Keys.ENTER)
    assert "1 to 150" in wait(page, lambda d: d.find_element("id", "e-steps").text)
    assert page.switch_to.active_element == steps  # the bad field gets focus
    assert not page.find_element("id", "e-prompt").text  # errors are cleared on each try
    logged = [e["message"] for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert all("422" in m for m in logged), logged  # the browser logs the refused POST itself


@BROWSER
def test_xss_prompt_shows_as_typed(page) -> None:
    job_id = submit(page, XSS, steps=2, size=64)
    link = card(page, job_id).find_element("css selector", "a.prompt")
    assert link.text == XSS
    assert not page.find_elements("css selector", "#gallery img[src='x']")
    wait(page, lambda d: card(d, job_id).get_attribute("data-status") == "succeeded")
    link.click()
    wait(page, lambda d: d.find_element("id", "job").is_displayed())
    params = page.find_element("id", "job-params").text
    assert XSS in params
    assert not page.find_elements("css selector", "#job img[src='x']")
    page.get(page.current_url.split("#")[0])
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018


@BROWSER
def test_cancel_a_running_job(page) -> None:
    job_id = submit(page, "a very slow painting", steps=150)
    wait(page, lambda d: card(d, job_id).get_attribute("data-status") == "running"
         and float(card(d, job_id).find_element("css selector", "progress").get_attribute("value")) > 0)
    card(page, job_id).find_element("css selector", "button.cancel").click()
    wait(page, lambda d: card(d, job_id).get_attribute("data-status") == "canceled")
    assert not card(page, job_id).find_element("css selector", "button.cancel").is_displayed()
    assert "canceled" in card(page, job_id).text


def open_job(driver, job_id: str) -> None:
    card(driver, job_id).find_element("css selector", "a.prompt").click()
    wait(driver, lambda d: d.find_element("id", "job").is_displayed()
         and d.execute_script("const i = document.querySelector('#job-image img');"
                              "return !!i && i.complete && i.naturalWidth > 0;"))


def job_page_seed(driver) -> int:
    text = driver.find_element("id", "job-df").text
    found = re.search(r"--seed (\d+)", text)
    assert found, text
    return int(found.group(1))


@BROWSER
def test_job_page_run_again_and_vary(page, server) -> None:
    job_id = submit(page, "a red fox, 'quoted'", steps=4, size=128)
    wait(page, lambda d: thumbnail_shown(d, job_id))
    open_job(page, job_id)
    seed = job_page_seed(page)
    assert str(seed) in page.find_element("id", "job-params").text
    assert "df generate 'a red fox, '\\''quoted'\\'''" in page.find_element("id", "job-df").text
    curl = page.find_element("id", "job-curl").text
    data = re.search(r"-d '(.*)'$", curl.replace("'\\''", "'"))
    assert data, curl
    body = json.loads(data.group(1))
    assert body["seed"] == seed and body["prompt"] == "a red fox, 'quoted'"
    assert page.find_element("id", "job-download").get_attribute("download").endswith(".png")
    wait(page, lambda d: "succeeded" in d.find_element("id", "job-events").text)
    assert page.find_element("id", "job-logs").text  # the job's own log lines

    page.find_element("id", "job-again").click()
    wait(page, lambda d: job_id not in d.current_url
         and d.find_element("id", "job-status").text == "succeeded")
    assert job_page_seed(page) == seed
    again = page.current_url.rsplit("/", 1)[1]
    assert httpx.get(f"{server.url}/v1/jobs/{again}").json()["params"]["seed"] == seed

    page.find_element("id", "job-vary").click()
    wait(page, lambda d: again not in d.current_url
         and d.find_element("id", "job-status").text == "succeeded")
    assert job_page_seed(page) != seed


@BROWSER
def test_a_batch_shows_every_image_its_seed_and_the_sampler(page, server) -> None:
    from selenium.webdriver.support.ui import Select

    Select(page.find_element("id", "f-scheduler")).select_by_value("euler_a")
    count = page.find_element("id", "f-count")
    count.clear()
    count.send_keys("3")
    job_id = submit(page, "three foxes", steps=2, size=64)
    sent = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()["params"]
    assert sent["count"] == 3 and sent["scheduler"] == "euler_a"
    wait(page, lambda d: "3/3 images" in card(d, job_id).text)
    open_job(page, job_id)
    wait(page, lambda d: d.execute_script(
        "const i = [...document.querySelectorAll('#job-items img')];"
        "return i.length === 3 && i.every((x) => x.complete && x.naturalWidth > 0);"))
    items = page.find_element("id", "job-items").text
    seed = job_page_seed(page)
    assert all(f"#{i} · {seed + i}" in items for i in range(3)), items
    params = page.find_element("id", "job-params").text
    assert "3 of 3" in params and "euler_a" in params
    assert "--count 3 --scheduler euler_a" in page.find_element("id", "job-df").text


@BROWSER
def test_screenshots(page, server, tmp_path: Path) -> None:
    """The gallery and a job page at desktop and phone widths, light and dark."""
    for n in range(3):
        submit(page, f"study {n} of light on water", steps=3, size=256)
    wait(page, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#gallery li')].slice(0, 4)"
        ".every(li => li.dataset.status !== 'succeeded' || li.querySelector('img')?.naturalWidth > 0)"))
    job_id = page.find_elements("css selector", "#gallery li[data-status='succeeded']")[0].get_attribute("data-id")
    out = Path(os.environ.get("DF_WEB_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        page.execute_cdp_cmd("Emulation.setEmulatedMedia",
                             {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
        for width, height, name in ((1280, 1500, "desktop"), (375, 1100, "phone")):
            page.set_window_size(width, height)
            page.get(server.url + "/")
            wait(page, lambda d: thumbnail_shown(d, job_id))
            width_seen = page.execute_script("return document.documentElement.scrollWidth")
            assert width_seen <= width, f"page is {width_seen} px wide at {width} px"
            suffix = "" if scheme == "light" else "-dark"
            page.save_screenshot(str(out / f"gallery-{name}{suffix}.png"))
            open_job(page, job_id)
            page.save_screenshot(str(out / f"job-{name}{suffix}.png"))
    page.execute_cdp_cmd("Emulation.setEmulatedMedia",
                         {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
    assert (out / "gallery-phone.png").stat().st_size > 1000


@BROWSER
def test_token_prompt(driver, tmp_path_factory) -> None:
    """With DF_API_TOKEN the page shows nothing but the sign-in prompt until the token works; the
    token lives in this tab's sessionStorage, images come through fetch with it."""
    guarded = WebServer(tmp_path_factory.mktemp("web-token"), DF_API_TOKEN=TOKEN)
    try:
        job = httpx.post(f"{guarded.url}/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"prompt": "a locked door", "width": 64, "height": 64, "steps": 2}).json()
        driver.set_window_size(1280, 900)
        driver.get(guarded.url + "/")
        wait(driver, lambda d: d.find_element("id", "sign-in").is_displayed())
        assert not driver.find_element("id", "app").is_displayed()
        assert not driver.find_elements("css selector", "#gallery li")
        box = driver.find_element("id", "token")
        assert driver.switch_to.active_element == box
        box.send_keys("wrong\n")
        assert "not accepted" in wait(driver, lambda d: d.find_element("id", "sign-in-error").text)
        assert not driver.find_element("id", "app").is_displayed()
        driver.get_log("browser")  # the 401 of the wrong token is logged by the browser itself
        driver.find_element("id", "token").send_keys(TOKEN + "\n")
        wait(driver, lambda d: d.find_element("id", "app").is_displayed())
        wait(driver, lambda d: thumbnail_shown(d, job["id"]), timeout=30)
        src = driver.find_element("css selector", f'li[data-id="{job["id"]}"] img').get_attribute("src")
        assert src.startswith("blob:")
        assert driver.execute_script("return sessionStorage.getItem('dreamforge.token')") == TOKEN
        assert driver.execute_script("return document.cookie") == ""
        assert TOKEN not in driver.current_url
        driver.refresh()  # kept for the tab
        wait(driver, lambda d: d.find_element("id", "app").is_displayed())
        driver.find_element("id", "sign-out").click()
        assert driver.find_element("id", "sign-in").is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('dreamforge.token')") is None
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        guarded.stop()

