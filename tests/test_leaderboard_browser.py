"""The leaderboard in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver. The page is opened from the file system (file://) and from a local static server; it
must log no console error, sort rows when a header is clicked, recompute the overall means when a
task is switched off, and never run a script hidden in a name. A screenshot is written to
test-artifacts/leaderboard.png. Skips only where /usr/bin/chromium is absent (`make test` installs it).
"""
from __future__ import annotations

import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medssl_bench.harness.store import ResultsStore
from medssl_bench.harness.workspace import Workspace
from medssl_bench.leaderboard import build_leaderboard
from tests.leaderboard_helpers import EVIL, NOW, fill_store, record

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
pytestmark = [pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)"),
              pytest.mark.slow]
# Chromium's background services (updates, sync, QUIC probes) would knock on a closed network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The main fixture store plus two checkpoints, so that sorting has four rows to reorder:
    fgadr 72 (aaa) 81 (bbb) 76 (ccc) 60 (ddd); brain_tumor 61, 50, 55, -; isic2018 86, -, 90, -."""
    folder = tmp_path_factory.mktemp("browser")
    with ResultsStore.open(f"sqlite:///{folder}/r.db", Workspace(folder)) as store:
        fill_store(store)
        store.upsert_checkpoint({"id": "ccc", "name": "MoCo run", "method": "moco", "synthetic": False})
        store.upsert_checkpoint({"id": "ddd", "name": "Random init", "method": "random", "synthetic": False})
        record(store, "ccc", "fgadr", "linear", [0.75, 0.76, 0.77], metric="accuracy")
        record(store, "ccc", "brain_tumor", "linear", [0.54, 0.55, 0.56], metric="accuracy")
        record(store, "ccc", "isic2018", "finetune", [0.89, 0.90, 0.91], metric="dice")
        record(store, "ddd", "fgadr", "linear", [0.59, 0.60, 0.61], metric="accuracy")
        return build_leaderboard(store, folder / "site", now=NOW).parent


@pytest.fixture(scope="module")
def server(site):
    handler = partial(QuietHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    before = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()
    if before is None:
        del os.environ["SE_OFFLINE"]
    else:
        os.environ["SE_OFFLINE"] = before


def open_page(driver, url: str) -> None:
    driver.get(url)
    assert driver.execute_script("return document.readyState") == "complete"
    driver.get_log("browser")  # start each check with an empty console


def severe_logs(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def order(driver, table: str = "table-real") -> list[str]:
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".map(function (r) { return r.getAttribute('data-checkpoint'); });", table)


def click_header(driver, selector: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#table-real thead {selector}").click()


def overall(driver, checkpoint: str) -> tuple[str, str, str]:
    """(mean rank, mean normalised score, tasks) as the page shows them now."""
    return tuple(driver.execute_script(
        "var tr = document.querySelector('#table-real tr[data-checkpoint=\"' + arguments[0] + '\"]');"
        "var n = parseInt(document.getElementById('table-real').getAttribute('data-columns'), 10);"
        "return [1, 2, 3].map(function (i) { return tr.children[n + i].textContent; });", checkpoint))


def toggle(driver, task_col: int) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"fieldset[data-table='table-real'] input[data-col='{task_col}']").click()


@pytest.mark.parametrize("source", ["file", "http"])
def test_page_loads_without_console_errors(driver, site, server, source):
    from selenium.webdriver.common.by import By

    open_page(driver, (site / "index.html").as_uri() if source == "file" else server)
    driver.execute_script("document.querySelector('#table-real thead th[data-sort-col=\"1\"]').click();"
                          "document.querySelector(\"fieldset[data-table='table-real'] input[data-col='1']\").click();")
    assert severe_logs(driver) == []
    assert driver.title == "bench leaderboard"
    names = [e.text.splitlines()[0] for e in driver.find_elements(By.CSS_SELECTOR, "#table-real tbody th")]
    assert EVIL in names  # shown as text; had it run, an alert would be open and this call would fail
    assert driver.find_elements(By.CSS_SELECTOR, "#charts-real svg.chart")


def test_clicking_headers_reorders_rows(driver, server):
    open_page(driver, server)
    assert order(driver) == ["ccc", "aaa", "bbb", "ddd"]  # by mean normalised score
    click_header(driver, "th[data-task='fgadr']")
    assert order(driver) == ["bbb", "ccc", "aaa", "ddd"]  # best first
    click_header(driver, "th[data-task='fgadr']")
    assert order(driver) == ["ddd", "aaa", "ccc", "bbb"]  # reversed
    click_header(driver, "th[data-task='isic2018']")
    assert order(driver) == ["ccc", "aaa", "ddd", "bbb"]  # missing last, in their previous order
    click_header(driver, "th[data-task='isic2018']")
    assert order(driver) == ["aaa", "ccc", "ddd", "bbb"]  # missing last both ways
    click_header(driver, "th[data-sort-col='0']")
    assert order(driver) == ["bbb", "ccc", "ddd", "aaa"]  # names as text: "<script..." first
    assert severe_logs(driver) == []


def test_switching_tasks_off_recomputes_the_means(driver, server):
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    # normalised scores: fgadr aaa 12/21, bbb 1, ccc 16/21, ddd 0; brain_tumor aaa 1, bbb 0, ccc 5/11;
    # isic2018 aaa 0, ccc 1. Ranks: fgadr bbb 1, ccc 2, aaa 3, ddd 4; brain aaa 1, ccc 2, bbb 3; isic ccc 1, aaa 2
    assert overall(driver, "aaa") == ("2.00", f"{(12 / 21 + 1 + 0) / 3:.3f}", "3/3")
    click_header(driver, "th[data-sort-col='5']")  # mean normalised score, best first
    assert order(driver) == ["ccc", "aaa", "bbb", "ddd"]
    toggle(driver, 1)  # fgadr off
    assert overall(driver, "aaa") == ("1.50", "0.500", "2/2")
    assert overall(driver, "ccc") == ("1.50", f"{(5 / 11 + 1) / 2:.3f}", "2/2")
    assert overall(driver, "ddd") == ("\u2014", "\u2014", "0/2")  # no shown task: missing, not zero
    assert order(driver) == ["ccc", "aaa", "bbb", "ddd"]  # re-sorted by the new means
    fgadr_header = driver.find_element(By.CSS_SELECTOR, "#table-real thead th[data-task='fgadr']")
    group = driver.find_element(By.CSS_SELECTOR, "#table-real thead th[data-group='classification/linear']")
    assert not fgadr_header.is_displayed() and group.get_attribute("colspan") == "1"
    group_box = driver.find_element(By.CSS_SELECTOR, "input[data-group-toggle='classification/linear']")
    assert driver.execute_script("return arguments[0].indeterminate", group_box)  # one of its two tasks is off
    group_box.click()  # a partly ticked group: the click ticks all of it
    assert overall(driver, "aaa") == ("2.00", f"{(12 / 21 + 1 + 0) / 3:.3f}", "3/3")
    group_box.click()  # the whole group off: only isic2018 is left
    assert overall(driver, "aaa") == ("2.00", "0.000", "1/1") and overall(driver, "ccc") == ("1.00", "1.000", "1/1")
    group_box.click()  # the whole group on again; then brain_tumor off: the ranking changes
    toggle(driver, 2)
    assert overall(driver, "bbb") == ("1.00", "1.000", "1/2")
    assert order(driver) == ["bbb", "ccc", "aaa", "ddd"]
    toggle(driver, 2)
    assert overall(driver, "aaa") == ("2.00", f"{(12 / 21 + 1 + 0) / 3:.3f}", "3/3")  # all on: the page's values
    assert severe_logs(driver) == []


def test_screenshot_artifact(driver, server):
    open_page(driver, server)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(int(height), 6000))
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / "leaderboard.png"
    assert driver.save_screenshot(str(target))
    assert target.stat().st_size > 10_000 and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
