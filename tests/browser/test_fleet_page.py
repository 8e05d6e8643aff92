"""
The fleet page in a real browser: headless Chromium, driven by Selenium,
against C{twistd slaveapi} serving the simulated lab.

The service runs as its own process, so the browser's blocking calls never
hold up its reactor. Every wait is an explicit, bounded wait for something
to show on the page.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.harness import ServiceProcess, start_service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Where the screenshot is left for a person to look at (and the docs to show).
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "fleet-page.png"
#: Seconds any one thing may take to show on the page (a loaded 2-core machine, a lab reboot).
WAIT = 90
TOKEN = "fleet-page-browser-test-token"


def _running_lab(data_dir: str) -> Iterator[ServiceProcess]:
    running = start_service(data_dir, "--lab", "12", "--lab-boot-time", "1")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: Any) -> Iterator[ServiceProcess]:
    yield from _running_lab(str(tmp_path_factory.mktemp("fleet-page")))


@pytest.fixture
def protected_service(tmp_path_factory: Any) -> Iterator[ServiceProcess]:
    """A service of its own whose reads need a token, so the other tests' service stays open."""
    yield from _running_lab(str(tmp_path_factory.mktemp("fleet-page-token")))


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1100",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310  # loopback http
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  # loopback http
        return json.load(response)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    # The list is drawn again as health verdicts arrive: an element found may be replaced before it is used.
    waiting = WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(condition, f"the page did not show {what} within {WAIT} s")


def click(driver: WebDriver, by: str, value: str) -> None:
    """Click the element once it is there (found again if it was drawn anew in between)."""

    def clicked(d: WebDriver) -> bool:
        d.find_element(by, value).click()
        return True

    wait_for(driver, clicked, f"{value} to click")


def row_names(driver: WebDriver) -> list[str]:
    names = driver.execute_script(
        "return [...document.querySelectorAll('#machines tbody tr')].map((row) => row.dataset.name);"
    )
    return [str(name) for name in names]


def _checked(service: ServiceProcess) -> Any:
    """C{GET /health} once the health loop has checked the fleet, else C{None}."""
    try:
        health = get_json(f"{service.url}/health")
    except urllib.error.HTTPError:
        return None
    return health if health.get("checked_at") else None


def test_filter_open_a_machine_and_reboot_it(service: ServiceProcess, browser: WebDriver) -> None:
    slaves = get_json(f"{service.url}/slaves")["slaves"]
    builders = sorted(slave["name"] for slave in slaves if slave["purpose"] == "build")
    assert builders and len(builders) < len(slaves)
    browser.get(f"{service.url}/")
    wait_for(browser, lambda d: len(row_names(d)) == len(slaves), "every machine")

    # The health loop's first check, then the machines it found down (the page reads health again soon).
    health = WebDriverWait(browser, WAIT).until(lambda _d: _checked(service), "the fleet was never checked")
    down = sorted(health["down"])
    assert down
    Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("down")
    wait_for(browser, lambda d: sorted(row_names(d)) == down, "the machines found down")
    Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("")

    Select(browser.find_element(By.ID, "filter-purpose")).select_by_value("build")
    wait_for(browser, lambda d: sorted(row_names(d)) == builders, "only the build machines")
    Select(browser.find_element(By.ID, "filter-enabled")).select_by_value("no")
    disabled = sorted(slave["name"] for slave in slaves if slave["purpose"] == "build" and not slave["enabled"])
    wait_for(browser, lambda d: sorted(row_names(d)) == disabled, "the disabled build machines")
    Select(browser.find_element(By.ID, "filter-enabled")).select_by_value("")
    wait_for(browser, lambda d: sorted(row_names(d)) == builders, "the build machines again")

    name = "bld-linux64-lab-001"
    click(browser, By.LINK_TEXT, name)
    fqdn = get_json(f"{service.url}/slaves/{name}")["fqdn"]
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "details-name"), name), "the details")
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "details-facts"), fqdn), "its FQDN")

    # disable asks for its reason (and offers force); cancelled, nothing is requested.
    click(browser, By.CSS_SELECTOR, "#action-buttons button[data-action='disable']")
    dialog = wait_for(
        browser, expected_conditions.visibility_of_element_located((By.ID, "action-dialog")), "disable's dialog"
    )
    assert dialog.find_element(By.ID, "field-reason").get_attribute("required") is not None
    force = Select(dialog.find_element(By.ID, "field-force"))
    assert [option.get_attribute("value") for option in force.options] == ["", "yes", "no"]
    # Without a reason the form does not go (the browser's own validation, at the click).
    dialog.find_element(By.ID, "action-confirm").click()
    assert dialog.is_displayed()
    assert browser.execute_script("return document.getElementById('field-reason').validity.valueMissing")
    dialog.find_element(By.ID, "action-cancel").click()
    wait_for(browser, expected_conditions.invisibility_of_element_located((By.ID, "action-dialog")), "no dialog")
    assert browser.find_elements(By.CSS_SELECTOR, "#runs .run") == []

    click(browser, By.CSS_SELECTOR, "#action-buttons button[data-action='reboot']")
    dialog = wait_for(
        browser, expected_conditions.visibility_of_element_located((By.ID, "action-dialog")), "the confirmation"
    )
    assert name in dialog.find_element(By.ID, "action-warning").text
    dialog.find_element(By.ID, "action-confirm").click()

    run = f"#runs .run[data-slave='{name}'][data-action='reboot']"
    wait_for(
        browser,
        expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, f"{run} .steps"), "Attempting SSH reboot"),
        "the reboot's first step",
    )
    finished = wait_for(
        browser,
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f"{run}[data-state='2']")),
        "the reboot's success",
    )
    assert finished.find_element(By.CSS_SELECTOR, ".state").text == "SUCCESS"
    steps = [step.text for step in finished.find_elements(By.CSS_SELECTOR, ".steps li")]
    assert steps == ["Attempting SSH reboot...Success!"]
    assert browser.find_element(By.ID, "live-mode").text == "Following the service's event stream."
    requestid = finished.get_attribute("data-requestid")
    result = get_json(f"{service.url}/slaves/{name}/actions/reboot?requestid={requestid}")
    assert (result["state"], result["text"]) == (2, "Attempting SSH reboot...Success!")

    # The history, once the reboot finished: the entry when the service keeps one.
    wait_for(
        browser,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, f"#history .history-entry[data-requestid='{requestid}']")
            or "History not available." in d.find_element(By.ID, "history").text
        ),
        "the machine's history",
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def _protect_with_a_token(service: ServiceProcess) -> None:
    """Turn tokens and C{protect_reads} on in the lab's configuration, and reload it (SIGHUP)."""
    lab = Path(service.data_dir) / "lab"
    credentials = json.loads((lab / "credentials.json").read_text(encoding="utf-8"))
    credentials["api_tokens"] = {"operator": {"token": TOKEN, "scopes": ["read", "inspect", "reboot"]}}
    (lab / "credentials.json").write_text(json.dumps(credentials), encoding="utf-8")
    ini = (lab / "slaveapi.ini").read_text(encoding="utf-8")
    assert "[auth]" not in ini
    (lab / "slaveapi.ini").write_text(ini + "\n[auth]\nprotect_reads = true\n", encoding="utf-8")
    os.kill(service.process.pid, signal.SIGHUP)


def _refused(url: str) -> bool:
    try:
        get_json(url)
    except urllib.error.HTTPError as error:
        return error.code == 401
    return False


def test_the_page_asks_for_a_token_and_sends_it(protected_service: ServiceProcess, browser: WebDriver) -> None:
    service = protected_service
    _protect_with_a_token(service)
    # The reload is done when reads need the token (bounded: WebDriverWait polls a plain function too).
    WebDriverWait(browser, WAIT).until(lambda _d: _refused(f"{service.url}/slaves"), "the reload did not happen")

    browser.get(f"{service.url}/")
    dialog = wait_for(
        browser, expected_conditions.visibility_of_element_located((By.ID, "token-dialog")), "the token dialog"
    )
    assert "Bearer" in dialog.find_element(By.ID, "token-reason").text
    # Declined at first: nothing is listed, and the event stream, refused too, gives way to polling.
    dialog.find_element(By.ID, "token-cancel").click()
    wait_for(
        browser,
        expected_conditions.text_to_be_present_in_element((By.ID, "list-status"), "Could not list"),
        "that the machines could not be listed",
    )
    wait_for(
        browser,
        expected_conditions.text_to_be_present_in_element((By.ID, "live-mode"), "No event stream"),
        "polling, the stream refused",
    )

    click(browser, By.ID, "token-set")
    dialog = wait_for(
        browser, expected_conditions.visibility_of_element_located((By.ID, "token-dialog")), "the token dialog again"
    )
    dialog.find_element(By.ID, "token-input").send_keys(TOKEN)
    dialog.find_element(By.ID, "token-save").click()
    slaves = get_json(f"{service.url}/slaves", TOKEN)["slaves"]
    wait_for(browser, lambda d: len(row_names(d)) == len(slaves), "every machine, read with the token")
    assert browser.find_element(By.ID, "token-state").text == "token set"
    # The stored token brings the event stream back.
    wait_for(
        browser,
        expected_conditions.text_to_be_present_in_element((By.ID, "live-mode"), "Following the service's event stream"),
        "the event stream, with the token",
    )

    name = "tst-linux64-lab-002"
    click(browser, By.LINK_TEXT, name)
    click(browser, By.CSS_SELECTOR, "#action-buttons button[data-action='buildslave_uptime']")
    run = f"#runs .run[data-slave='{name}'][data-action='buildslave_uptime']"
    finished = wait_for(
        browser,
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f"{run}[data-state='2']")),
        "the uptime's success",
    )
    assert finished.find_element(By.CSS_SELECTOR, ".state").text == "SUCCESS"
    requestid = finished.get_attribute("data-requestid")
    result = get_json(f"{service.url}/slaves/{name}/actions/buildslave_uptime?requestid={requestid}", TOKEN)
    assert result["state"] == 2
    # Without the token the page's reads are refused: it did send it.
    assert _refused(f"{service.url}/slaves/{name}/actions/buildslave_uptime?requestid={requestid}")


#: Drives a L{Follower} of the page's C{live.js} with a fake C{fetch}: C{answered} streams that end
#: at once (after one event), then answers of status C{status}; calls back with what it saw once it polls.
_RECONNECTING = """
const [answered, status, done] = arguments;
import("/static/live.js").then(({ Follower }) => {
  const lastIds = [];
  const modes = [];
  const fetchStub = async (path, init) => {
    lastIds.push(init.headers["Last-Event-ID"] || null);
    if (lastIds.length > answered) {
      return new Response("", { status });
    }
    const frames = `: connected\n\nid: ${lastIds.length}\nevent: result\ndata: {"requestid": 0, "state": 1}\n\n`;
    return new Response(frames, { headers: { "content-type": "text/event-stream" } });
  };
  const onMode = (mode) => {
    modes.push(mode);
    if (mode === "polling") {
      done({ lastIds, modes });
    }
  };
  new Follower(null, () => {}, onMode, { fetch: fetchStub, reconnectDelayMs: 1 }).start();
}, (error) => done({ error: String(error) }));
"""


@pytest.mark.parametrize(("answered", "status", "calls"), [(8, 404, 9), (0, 503, 6), (2, 503, 7)])
def test_the_page_connects_again_while_the_stream_keeps_being_answered(
    service: ServiceProcess, browser: WebDriver, answered: int, status: int, calls: int
) -> None:
    """
    Failed connections in a row are bounded (6 in all); a stream that was answered, then
    lost, starts the count again (as the first failure), however many were lost over the
    page's life; a 404 stops it at once.
    """
    browser.get(f"{service.url}/")
    browser.set_script_timeout(WAIT)
    seen = browser.execute_async_script(_RECONNECTING, answered, status)
    assert "error" not in seen, seen
    # Each connection after the first resumes after the last event it had.
    ids = [None, *(str(n) for n in range(1, answered + 1))]
    assert seen["lastIds"] == ids + ids[-1:] * (calls - len(ids))
    assert seen["modes"] == ["stream", "connecting"] * answered + ["polling"]


def test_without_an_event_stream_the_page_follows_by_polling(service: ServiceProcess, browser: WebDriver) -> None:
    # The browser cannot reach /events at all, as with a service that has none.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/events*"]})
    name = "bld-linux64-lab-006"
    browser.get(f"{service.url}/#slave={name}")
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "details-name"), name), "the details")
    click(browser, By.CSS_SELECTOR, "#action-buttons button[data-action='reboot']")
    wait_for(browser, expected_conditions.visibility_of_element_located((By.ID, "action-dialog")), "the confirmation")
    browser.find_element(By.ID, "action-confirm").click()

    run = f"#runs .run[data-slave='{name}'][data-action='reboot']"
    finished = wait_for(
        browser,
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f"{run}[data-state='2']")),
        "the reboot's success",
    )
    # Followed without the stream: polled while it was being tried again, or for good.
    assert browser.find_element(By.ID, "live-mode").text != "Following the service's event stream."
    requestid = finished.get_attribute("data-requestid")
    result = get_json(f"{service.url}/slaves/{name}/actions/reboot?requestid={requestid}")
    steps = [step.text for step in finished.find_elements(By.CSS_SELECTOR, ".steps li")]
    assert steps == result["text"].split("\n")
    assert steps[0].startswith("Attempting SSH reboot...Failed") and steps[-1] == "Attempting IPMI reboot...Success!"
