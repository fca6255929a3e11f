"""The web catalog in a real browser: Debian's chromium, headless, driven
by Selenium through chromedriver. A user logs in, searches, opens a
product and a table, and runs a query; the test reads the DOM (what a
person would see) and the page source (no raw PII anywhere for a masked
user), and keeps screenshots (`MESHQ_WEB_SCREENSHOTS=DIR` writes them
there; docs/web.md shows the demo's)."""

import csv
import io
import os
import shutil
import subprocess
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import meshq_binary

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def catalog():
    """`meshq demo` on free ports: the mesh dir and the catalog's URL."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are needed (scripts/test.sh installs them)")
    d = tempfile.mkdtemp(prefix="meshq-web-")
    mesh = os.path.join(d, "mesh")
    subprocess.run([meshq_binary(), "demo", "--no-shell", mesh], check=True, capture_output=True)
    env = dict(os.environ, MESHQ_LOG="warn")
    proc = subprocess.Popen(
        [meshq_binary(), "demo", mesh, "--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = None
    for line in proc.stderr:
        if line.startswith("meshq web catalog on "):
            url = line.strip().rsplit(" ", 1)[1].rstrip("/")
        if line.startswith("meshq serving Flight SQL on "):
            break
    if url is None:
        proc.kill()
        pytest.fail("meshq demo did not start the web catalog")
    yield mesh, url
    proc.terminate()
    proc.wait(timeout=20)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def replaced(page):
    """Whether `page` (an element of the old document) is gone. Chrome
    answers a look at a node of a document it is replacing either with a
    stale-element error or with an inspector error saying the node does
    not belong to the document: both mean the next page arrived."""
    def check(_driver):
        try:
            page.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
    return check


def click(driver, element):
    """Clicks and waits for the next page to replace this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 10).until(replaced(page))


def shot(driver, name):
    out = os.environ.get("MESHQ_WEB_SCREENSHOTS") or tempfile.gettempdir()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.png")
    driver.save_screenshot(path)
    assert os.path.getsize(path) > 10_000, path


def raw_pii(mesh):
    """Emails and customer ids as pat (a PII reader) sees them."""
    out = subprocess.run(
        [meshq_binary(), "demo", mesh, "--as", "pat", "--format", "csv", "-c",
         "SELECT customer_id, email FROM customers.profiles"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    values = set()
    for row in csv.DictReader(io.StringIO(out)):
        values.update(v for v in row.values() if v and len(v) > 4)
    assert len(values) > 100
    return values


def test_a_user_logs_in_searches_reads_and_queries(catalog, browser):
    mesh, url = catalog
    secrets = raw_pii(mesh)

    browser.get(url + "/")
    assert browser.current_url.startswith(url + "/login")
    shot(browser, "login")
    browser.find_element(By.NAME, "user").send_keys("ana")
    browser.find_element(By.NAME, "password").send_keys("ana-demo")
    click(browser, browser.find_element(By.CSS_SELECTOR, "form.login button"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Data products"
    assert "Me (ana)" in browser.find_element(By.TAG_NAME, "nav").text

    search = browser.find_element(By.NAME, "q")
    search.send_keys("orders")
    click(browser, browser.find_element(By.CSS_SELECTOR, "form.search button"))
    cards = browser.find_elements(By.CSS_SELECTOR, "article.card")
    assert any("orders" in c.text for c in cards)
    shot(browser, "products")

    click(browser, browser.find_element(By.LINK_TEXT, "orders"))
    body = browser.find_element(By.TAG_NAME, "main").text
    assert "sales-data" in body and "Quality" in body and "Lineage" in body
    assert browser.find_elements(By.CSS_SELECTOR, "svg.lineage")
    shot(browser, "product")

    click(browser, browser.find_element(By.LINK_TEXT, "sales.orders"))
    body = browser.find_element(By.TAG_NAME, "main").text
    assert "own_region" in body and "'EMEA'" in body
    assert "masked: hash" in body and "masked: partial" in body
    shot(browser, "table")

    click(browser, browser.find_element(By.LINK_TEXT, "Query it"))
    sql = browser.find_element(By.NAME, "sql")
    sql.clear()
    sql.send_keys(
        "SELECT o.order_id, o.customer_id, o.email, p.full_name, o.region "
        "FROM sales.orders o JOIN customers.profiles p USING (customer_id) ORDER BY o.order_id LIMIT 20"
    )
    click(browser, browser.find_element(By.CSS_SELECTOR, "button[value=html]"))
    body = browser.find_element(By.TAG_NAME, "main").text
    assert "20 row(s) in" in body
    assert "***@***" in body and "EMEA" in body
    rows = browser.find_elements(By.CSS_SELECTOR, "main table tbody tr")
    assert len(rows) == 20
    shot(browser, "sql")

    browser.get(url + "/lineage")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.lineage a")
    shot(browser, "lineage")

    # Nowhere in what ana's browser received is a raw email or id.
    for path in ["/products", "/tables/customers.profiles", "/me", "/lineage"]:
        browser.get(url + path)
        source = browser.page_source
        leaked = [s for s in secrets if s in source]
        assert not leaked, (path, leaked[:3])

    browser.get(url + "/tables/payments.transactions")
    assert "You may not read this table" in browser.find_element(By.TAG_NAME, "main").text
