"""The admin and dashboard pages in a real browser: Debian's Chromium, headless, driven by
Selenium against live_server, logged in through the admin's login form.

Each test takes a screenshot of its page (into the test's temporary directory, and into
$SCREENSHOT_DIR too when that is set, to look at them) and checks what a person would
see: the heading, a number from the data, the admin's styles applied, and the charts
drawn by Chart.js loaded from our own static files.

Needs `apt-get install chromium chromium-driver`; without them these tests fail when CI
is set and are skipped otherwise.
"""

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.urls import reverse

from .dashboard_data import build_sample_data, make_staff

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless, and nothing that reaches beyond this machine (updates, sync, metrics).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
WIDTH = 1400
PASSWORD = "a-long-test-password"


def browser_unavailable() -> str | None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        return f"{' and '.join(missing)} missing: apt-get install -y chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install -r requirements-dev.txt"
    return None


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def browser(tmp_path):
    if reason := browser_unavailable():
        if running_in_ci():
            pytest.fail(f"screenshot tests need a browser: {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--window-size={WIDTH},1000")
    # The driver's path is given, so Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def data(transactional_db):
    return build_sample_data()


@pytest.fixture
def open_page(browser, live_server, data, tmp_path):
    """Logs a staff user in through the login form, then opens pages."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    make_staff("operator", superuser=True, password=PASSWORD)
    logged_in = False

    def open_(path: str) -> Any:
        nonlocal logged_in
        if not logged_in:
            browser.get(f"{live_server.url}{reverse('admin:login')}?next={path}")
            browser.find_element(By.ID, "id_username").send_keys("operator")
            browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
            browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
            logged_in = True
        else:
            browser.get(f"{live_server.url}{path}")
        WebDriverWait(browser, 10).until(
            lambda driver: urlparse(driver.current_url).path == urlparse(path).path
        )
        return browser

    return open_


def screenshot(browser, directory: Path, name: str) -> Path:
    """The whole page: the window is made as tall as the page first."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, min(max(height + 150, 800), 8000))
    # Two animation frames: charts follow the new size before the picture is taken.
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => requestAnimationFrame(done));"
    )
    path = directory / f"{name}.png"
    assert browser.save_screenshot(str(path)), name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if copy_to := os.environ.get("SCREENSHOT_DIR"):
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / path.name)
    return path


def text_of(browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector).text.strip()


def admin_styles_applied(browser) -> bool:
    # base.css lays the header out as a flex row; unstyled, it is a plain block.
    return browser.execute_script(
        "return getComputedStyle(document.getElementById('header')).display === 'flex'"
    )


CHART_STATE = """
const canvas = document.getElementById(arguments[0]);
const chart = canvas && window.Chart && Chart.getChart(canvas);
if (!chart) { return null; }
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] > 0) { painted++; } }
return {width: canvas.clientWidth, height: canvas.clientHeight, painted: painted,
        bars: chart.data.datasets.map((set) => set.data.reduce((a, b) => a + b, 0))};
"""


def chart_state(browser, canvas_id: str) -> dict | None:
    return browser.execute_script(CHART_STATE, canvas_id)


def test_dashboard_in_a_browser(open_page, tmp_path):
    browser = open_page(reverse("admin:dashboard") + "?period=7d")

    screenshot(browser, tmp_path, "dashboard")
    assert browser.title.startswith("Dashboard")
    assert text_of(browser, "h1") == "Dashboard"
    assert text_of(browser, "#total-submitted") == "7"
    assert text_of(browser, "#total-success-rate") == "66.7%"
    assert admin_styles_applied(browser)
    per_day = chart_state(browser, "tasks-per-day-chart")
    assert per_day, "Chart.js did not draw the tasks per day (was chart.umd.js served?)"
    assert per_day["width"] > 300 and per_day["height"] > 100 and per_day["painted"] > 1000
    assert per_day["bars"] == [4, 2, 1]  # succeeded, failed, still running
    per_channel = chart_state(browser, "channel-success-chart")
    assert per_channel and per_channel["width"] > 300 and per_channel["painted"] > 1000
    assert "gamma" in text_of(browser, "#disabled-channels")


def test_consumer_usage_page_in_a_browser(open_page, data, tmp_path):
    alice = data.consumers["alice"]
    browser = open_page(reverse("admin:dashboard_consumer", args=[alice.pk]) + "?period=7d")

    screenshot(browser, tmp_path, "consumer-usage")
    assert text_of(browser, "h1") == "Usage: alice"
    assert text_of(browser, "#total-charged") == "550"
    assert text_of(browser, "#csv-export") == "EXPORT TASKS (CSV)"  # object-tools capitalise
    per_day = chart_state(browser, "tasks-per-day-chart")
    assert per_day and per_day["painted"] > 1000 and per_day["bars"] == [3, 1, 0]


def test_task_change_page_in_a_browser(open_page, data, tmp_path):
    task = data.tasks[3]
    browser = open_page(reverse("admin:videos_videotask_change", args=[task.pk]))

    screenshot(browser, tmp_path, "task-change")
    assert text_of(browser, "h1") == "View video task"
    assert task.task_id in text_of(browser, ".field-task_id")
    assert "kling-v2-master" in text_of(browser, ".field-model_name")
    assert admin_styles_applied(browser)


def test_channel_list_in_a_browser(open_page, tmp_path):
    browser = open_page(reverse("admin:channels_app_channel_changelist"))

    screenshot(browser, tmp_path, "channel-list")
    assert text_of(browser, "h1") == "Select channel to change"
    names = text_of(browser, "#result_list")
    assert all(name in names for name in ("alpha", "beta", "gamma"))
    assert "Disabled automatically" in names
    assert admin_styles_applied(browser)
