"""The Snakemake report of a tiny study as a reader sees it: rendered by headless Chromium (Debian's chromium
and chromium-driver, installed by scripts/setup.sh) through Selenium.

The report is a React app that keeps every result as a base64 ``data:`` URL: an HTML result (a summary
table, an analysis page) opens in an iframe, a figure in an ``img``. The tests click through its menus as a
reader does and check what the browser shows: the summary's numbers (from summary.tsv) and every figure of
the analysis page decoded to its real size. Chromium refuses data URLs over 2 MiB, which is why analysis pages
are kept small (tests/test_analysis.py checks the full study's page); the first test checks that limit
itself on this Chromium.
"""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import require_mirror
from test_pipeline import TINY   # the tiny study of the pipeline tests
from onepass import catalog, figures, tables

pytestmark = pytest.mark.pipeline

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# without the background-networking flags Chromium stalls on a machine without network
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1400,1000"]
WAIT_S = 30


def missing(message: str):
    """Skip for want of the browser or its driver, or fail under CI (where scripts/setup.sh installs them)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: tests must not skip; scripts/setup.sh installs it)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium (no driver or browser download: Debian's binaries)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            missing(f"{path} missing: apt-get install {package} (scripts/setup.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, copy_workflow):
    """The tiny study run to completion and its report: (workflow directory, report.html)."""
    mirror = str(require_mirror("uci_energy/data.txt"))
    workdir = copy_workflow(tmp_path_factory.mktemp("report"), {**TINY, "data_mirrors": [mirror]})
    report = workdir / "results" / "tiny" / "report.html"
    # the jobs' `python` is this one (a virtual environment not activated still runs them)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for args in (["--profile", "profiles/local", "--cores", "2", "--configfile", "tiny.yaml"],
                 ["--report", str(report.relative_to(workdir)), "--configfile", "tiny.yaml"]):
        proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, text=True, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.returncode == 0, proc.stdout[-6000:]
    return workdir, report


def rst_messages(text: str) -> list[str]:
    """The docutils system messages (errors, warnings) that rendering ``text`` as reStructuredText gives, as
    the report renders every caption."""
    from docutils.core import publish_parts

    html = publish_parts(text, writer="html", settings_overrides={"report_level": 2, "halt_level": 5,
                                                                         "warning_stream": False})["html_body"]
    return [m for m in html.split('class="system-message"')[1:]]


def test_every_caption_renders_without_docutils_messages():
    """Captions are reStructuredText in the report: ``|x|`` (a substitution), a stray ``*`` or backquote
    shows the reader a "Docutils System Messages" block instead."""
    from onepass import heatmaps

    assert rst_messages("bad |exact - ours| here")   # the check sees the mistake it guards against
    captions = [figures.caption(kind, "UCI Energy") for kind in figures.KINDS]
    captions += [heatmaps.caption(kind, "uci_energy") for kind in heatmaps.CAPTIONS]
    for rst in sorted((Path(__file__).resolve().parents[1] / "workflow" / "report").glob("*.rst")):
        captions.append(rst.read_text().replace("{{", "").replace("}}", ""))
    for text in captions:
        assert not rst_messages(text), text


def test_built_report_has_no_docutils_message(tiny_report):
    _, report = tiny_report
    text = report.read_text()
    assert "System Message" not in text and "system-message" not in text


def wait_for(driver, xpath):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element("xpath", xpath))


def open_result(driver, report: Path, category: str, subcategory: str, item: str) -> None:
    """Open the report, click category > subcategory in its menu and the view button of the result whose
    label is ``item``, as a reader does."""
    driver.switch_to.default_content()
    driver.get(report.as_uri())
    for name in (category, subcategory):
        wait_for(driver, f"//a[span[normalize-space()='{name}']]").click()
    row = wait_for(driver, f"//tr[td[normalize-space()='{item}']]")
    row.find_element("css selector", "a[type=button]").click()  # the first button: view


def enter_frame(driver):
    """Switch into the iframe showing an HTML result, once its document has a body with text."""
    from selenium.webdriver.support.ui import WebDriverWait
    frame = wait_for(driver, "//iframe")
    assert frame.get_attribute("src").startswith("data:text/html")
    driver.switch_to.frame(frame)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.readyState") == "complete" and d.find_elements("xpath", "//h1|//h2"))


def data_url(characters: int) -> str:
    """A data URL of an HTML page with a heading, ``characters`` long (to within 4)."""
    prefix = "data:text/html;base64,"
    head, tail = "<html><body><h1>data URL</h1><p>", "</p></body></html>"
    size = (characters - len(prefix)) * 3 // 4
    page = head + "x" * (size - len(head) - len(tail)) + tail
    return prefix + base64.b64encode(page.encode()).decode()


@pytest.mark.parametrize("mib, shown", [(1.9, True), (2.1, False)])
def test_chromium_refuses_data_urls_over_2_mib(browser, tmp_path, mib, shown):
    """The premise of the analysis pages' size budget: this Chromium shows an iframe whose data URL is
    1.9 MiB long and leaves one of 2.1 MiB blank."""
    import time
    url = data_url(int(mib * 2 ** 20))
    outer = tmp_path / "outer.html"
    outer.write_text(f"<html><body><iframe src='{url}'></iframe></body></html>")
    browser.switch_to.default_content()
    browser.get(outer.as_uri())
    browser.switch_to.frame(wait_for(browser, "//iframe"))
    deadline = time.monotonic() + (WAIT_S if shown else 3)
    while not browser.find_elements("xpath", "//h1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bool(browser.find_elements("xpath", "//h1")) == shown
    browser.switch_to.default_content()


def test_report_shows_the_summary_numbers(browser, tiny_report):
    """Category uci_energy > Tables > summary table: every algorithm's row shows the numbers of summary.tsv
    (mean and median ± SE rounded as tables.with_se rounds them, best to four significant digits, run counts)."""
    workdir, report = tiny_report
    summary = pd.read_csv(workdir / "results" / "tiny" / "tables" / "uci_energy" / "summary.tsv", sep="\t")
    open_result(browser, report, "uci_energy", "Tables", "summary table")
    enter_frame(browser)
    header = [th.text for th in browser.find_elements("xpath", "//table//th")]
    rows = {}
    for tr in browser.find_elements("xpath", "//table/tbody/tr"):
        assert tr.is_displayed()
        cells = [td.text for td in tr.find_elements("xpath", "td")]
        rows[cells[0]] = dict(zip(header, cells))
    assert set(rows) == set(summary["label"]) >= {catalog.label(a) for a in TINY["algorithms"]["uci_energy"]}
    for _, s in summary.iterrows():
        row = rows[s["label"]]
        assert row["Mean ± SE"] == tables.with_se(s["mean"], s["mean_se"])
        assert row["Median ± SE"] == tables.with_se(s["median"], s["median_se"])
        assert row["Best"] == f"{s['best']:.4g}"
        assert row["Runs"] == str(s["runs"]) and row["Diverged"] == str(s["diverged"])
    assert "Random (3-batched)" in rows
    browser.switch_to.default_content()


def test_report_shows_the_analysis_page_with_its_figures(browser, tiny_report):
    """Category uci_energy > Analysis page: the page opens in the report and each of its figures is an
    image the browser decoded at its real size."""
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait
    workdir, report = tiny_report
    figures_dir = workdir / "results" / "tiny" / "figures" / "uci_energy"
    widths = {}
    for kind in figures.KINDS:
        with Image.open(figures_dir / f"{kind}.png") as image:
            widths[kind] = image.size[0]
    open_result(browser, report, "uci_energy", "Analysis page", "analysis page")
    enter_frame(browser)
    assert browser.find_element("xpath", "//h1").text == "UCI Energy: population analysis"
    for fig in figures.FIGURES.values():
        assert browser.find_element("xpath", f"//h2[normalize-space()='{fig.title}']").is_displayed()
    images = WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
        "const im = Array.from(document.images);"
        "return im.length && im.every(i => i.complete) ? im.map(i => [i.alt, i.naturalWidth]) : null;"))
    assert dict(images) == widths  # every figure, decoded (naturalWidth > 0) at the PNG's own width
    browser.switch_to.default_content()


def test_report_shows_each_figure(browser, tiny_report):
    """Category uci_energy > Figures: each figure opens as a decoded image."""
    workdir, report = tiny_report
    for kind in figures.KINDS:
        open_result(browser, report, "uci_energy", "Figures", kind)
        image = wait_for(browser, "//img[starts-with(@src, 'data:image/png')]")
        width = browser.execute_script(
            "const i = arguments[0]; return i.complete ? i.naturalWidth : -1;", image)
        assert width > 0, kind
