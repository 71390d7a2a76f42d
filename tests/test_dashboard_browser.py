"""The dashboard in a real headless browser (Debian's Chromium and chromedriver, installed by
scripts/bootstrap --browser, driven by Selenium): the page shows a node and its chart, a keyword
arrives live over Server-Sent Events, and text from the network stays text."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from selenium.webdriver.common.by import By
except ImportError:  # the dev extra brings it; the fixture skips without it
    By = None

from dashboard.server import Dashboard
from tests.waiting import wait_for
from tinyml_core.messages import (
    ClimateReading,
    ErrorRecord,
    Forecast,
    ForecastStep,
    KeywordResult,
)
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import PredictionKind, climate_topic, errors_topic, prediction_topic

pytestmark = pytest.mark.broker
T0 = 1_729_299_600.0
HOSTILE = "sensors/<script>document.title='owned'</script>/climate"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        message = "chromium and chromedriver are not installed (scripts/bootstrap --browser)"
        if os.environ.get("TINYML_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1300"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_node_page_shows_the_chart_and_a_keyword_arriving_live(
        dashboard: Dashboard, connect: Callable[..., MqttClient], browser: Any) -> None:
    node = connect("pi-kitchen")
    for step in range(8):
        reading = ClimateReading("pi-kitchen", T0 + 600 * step, step, 20.0 + step / 4, 50.0)
        assert node.publish(climate_topic("pi-kitchen"), reading.encode()).wait(5)
    collector = connect("collector-1")
    forecast = Forecast("pi-kitchen", "forecast_a", "1+abc", T0 + 600 * 7, 0.2,
                        tuple(ForecastStep(T0 + 600 * (8 + i), 22.0, 50.0) for i in range(3)))
    assert collector.publish(prediction_topic("pi-kitchen", PredictionKind.FORECAST),
                             forecast.encode(), retain=True).wait(5)
    record = ErrorRecord("pi-kitchen", T0, HOSTILE, "not a valid node id", 40, "x")
    assert collector.publish(errors_topic("pi-kitchen"), record.encode()).wait(5)
    assert wait_for(lambda: dashboard.history.node("pi-kitchen") is not None)

    browser.get(dashboard.address + "node/pi-kitchen")
    assert wait_for(lambda: browser.find_element(By.ID, "node-title").text == "pi-kitchen")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-temperature path.measured")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-temperature path.forecast")
    assert wait_for(lambda: browser.find_element(By.ID, "connection").text == "live")
    assert not any("go" in words for words in keyword_words(browser))
    # Published only now that the page is listening: it can only arrive live.
    keyword = KeywordResult("pi-kitchen", "kws_b", "1+abc", T0 + 4000, 1.0, 0.1, "go",
                            {"go": 0.93, "no": 0.07})
    assert collector.publish(prediction_topic("pi-kitchen", PredictionKind.KEYWORD),
                             keyword.encode()).wait(5)
    assert wait_for(lambda: "go 93 %" in keyword_words(browser)), "the keyword did not arrive"
    unknown = KeywordResult("pi-kitchen", "kws_e", "1+abc", T0 + 4010, 1.0, 0.1, "unknown",
                            {"go": 0.62, "no": 0.08, "unknown": 0.3})
    assert collector.publish(prediction_topic("pi-kitchen", PredictionKind.KEYWORD),
                             unknown.encode()).wait(5)
    assert wait_for(lambda: "unknown, closest go 62 %" in keyword_words(browser))
    # The hostile topic is shown as text: no script ran, no element was made of it.
    cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#errors td")]
    assert HOSTILE in cells
    assert browser.title == "tinyml dashboard"
    assert not browser.find_elements(By.CSS_SELECTOR, "#errors script")


def keyword_words(browser: Any) -> list[str]:
    """The keyword log's "heard" column, read in one script call: the page replaces the rows
    on every update, so rows found one call and read in the next may be gone (stale)."""
    words: list[str] = browser.execute_script(
        "return Array.from(document.querySelectorAll('#keywords tbody tr'))"
        ".map((row) => row.cells[1].textContent);")
    return words


def test_the_overview_lists_the_node(dashboard: Dashboard, connect: Callable[..., MqttClient],
                                     browser: Any) -> None:
    node = connect("pi-hall")
    reading = ClimateReading("pi-hall", T0, 0, 19.5, 61.0)
    assert node.publish(climate_topic("pi-hall"), reading.encode()).wait(5)
    assert wait_for(lambda: dashboard.history.node("pi-hall") is not None)
    browser.get(dashboard.address)
    assert wait_for(lambda: bool(browser.find_elements(By.LINK_TEXT, "pi-hall")))
    row = browser.find_element(By.CSS_SELECTOR, "#nodes tbody tr").text
    assert "19.5 °C, 61 %" in row and "online" in row
