"""report.html in a real headless Chromium (Debian's package), started and stopped by the test: no console error,
every plot visible, the table sorts on a click, the sweep's grid follows its select box.

Run by ``nox -s browser`` (``pytest -m browser``), which installs Chromium with apt-get when it is missing.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
from advssm.cli.experiment import cell_folder
from advssm.cli.results import report_html

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside the tests (--import-mode=importlib)
from chromium_cdp import Chromium, find_chromium  # noqa: E402
from html_sweep import partial_sweep  # noqa: E402

pytestmark = pytest.mark.browser

PLOTS = """Array.from(document.querySelectorAll('svg.plot')).map(function (el) {
  el.scrollIntoView({block: 'center'});
  var r = el.getBoundingClientRect(), s = getComputedStyle(el);
  var hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  var lines = Array.from(el.querySelectorAll('polyline')).filter(function (p) {
    var b = p.getBBox(); return b.width > 0; }).length;
  return {title: el.querySelector('title').textContent, width: r.width, height: r.height, top: r.top,
          bottom: r.bottom, left: r.left, right: r.right, vw: innerWidth, vh: innerHeight, display: s.display,
          visibility: s.visibility, opacity: s.opacity, on_top: !!hit && el.contains(hit), lines: lines};
})"""

COLUMN = """(function (label) {
  var heads = Array.from(document.querySelectorAll('#summary thead th'));
  var i = heads.findIndex(function (th) { return th.textContent.trim() === label; });
  return Array.from(document.querySelectorAll('#summary tbody tr')).map(function (tr) {
    return [tr.cells[0].textContent, tr.cells[i].getAttribute('data-value')]; });
})"""


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        raise RuntimeError("the browser tests need Chromium: apt-get install -y chromium (nox -s browser does it)")
    with Chromium() as chromium:
        yield chromium
    assert chromium.process.poll() is not None  # stopped, by its PID if it did not close


@pytest.fixture(scope="module")
def run_with_curves(tiny_run, tmp_path_factory):
    """The tiny run with a robustness curve and distinct numbers in each cell, one of them not evaluated by AA."""
    from advssm.cli.main import cli
    from click.testing import CliRunner

    run = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(tiny_run, run)
    shutil.copytree(run / "pgd-at", run / "trades")
    for name, clean, pgd, aa in (("standard", 0.9, 0.05, 0.01), ("pgd-at", 0.7, 0.4, 0.35),
                                 ("trades", 0.8, 0.3, None)):
        final = json.loads((run / name / "final_eval.json").read_text())
        final["stages"]["best"].update(clean_acc=clean, pgd_acc=pgd, aa_acc=aa)
        (run / name / "final_eval.json").write_text(json.dumps(final))
    result = CliRunner().invoke(cli, ["eval", str(run / "pgd-at" / "best.safetensors"), "--eps", "0.05,0.1",
                                      "--attacks", "fgsm,pgd", "--steps", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["report", str(run), "--html"])
    assert result.exit_code == 0, result.output
    return run


def _open(browser, page_path):
    return browser.open(Path(page_path).resolve().as_uri(), width=1200, height=800)


def test_page_renders_without_errors_and_every_plot_is_visible(browser, run_with_curves):
    page = _open(browser, run_with_curves / "report.html")
    assert page.errors == []
    plots = page.evaluate(PLOTS)
    # one epoch plot per cell (3) and the pgd-at cell's robustness curve
    assert len(plots) == 4 and sum("accuracy against eps" in p["title"] for p in plots) == 1, plots
    for plot in plots:
        assert plot["width"] > 100 and plot["height"] > 50, plot
        assert 0 <= plot["top"] and plot["bottom"] <= plot["vh"] and 0 <= plot["left"] and plot["right"] <= plot["vw"]
        assert plot["display"] != "none" and plot["visibility"] == "visible" and plot["opacity"] == "1", plot
        assert plot["on_top"] and plot["lines"] >= 2, plot
    assert page.evaluate("document.querySelectorAll('.best-epoch').length") == 3


def test_clicking_a_header_sorts_the_table(browser, run_with_curves):
    page = _open(browser, run_with_curves / "report.html")

    def click_header(label):
        box = page.evaluate(f"""(function () {{
          var th = Array.from(document.querySelectorAll('#summary thead th')).find(function (t) {{
            return t.textContent.trim() === {json.dumps(label)}; }});
          th.scrollIntoView({{block: 'center'}});
          var r = th.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""")
        page.click(*box)
        return page.evaluate(f"({COLUMN})({json.dumps(label)})")

    before = page.evaluate(f"({COLUMN})('Best AA')")
    assert [name for name, _ in before] == ["standard", "pgd-at", "trades"]  # the grid's order
    assert click_header("Best AA") == [["standard", "0.010000"], ["pgd-at", "0.350000"], ["trades", ""]]
    assert page.evaluate("document.querySelector('#summary th[aria-sort=ascending]').textContent") == "Best AA"
    # descending; the cell AA did not evaluate stays last
    assert click_header("Best AA") == [["pgd-at", "0.350000"], ["standard", "0.010000"], ["trades", ""]]
    assert [n for n, _ in click_header("Best Clean")] == ["pgd-at", "trades", "standard"]
    assert [n for n, _ in click_header("Cell")] == ["pgd-at", "standard", "trades"]
    assert page.errors == []


def test_sweep_grid_follows_the_select_box_and_marks_partial_cells(browser, tiny_run, tmp_path):

    folder = partial_sweep(tiny_run, tmp_path / "sweep")
    page_path = report_html.write_html(folder, {n: folder / n for n in ("s4d-standard", "s4d-pgd-at")}, "sweep")
    page = _open(browser, page_path)
    assert page.errors == []
    grid = """Array.from(document.querySelectorAll('#grid table.grid tr')).map(function (tr) {
      return Array.from(tr.cells).map(function (c) { return [c.textContent, c.className]; }); })"""
    rows = page.evaluate(grid)
    assert [c[0] for c in rows[0]] == ["layer \\ method", "standard", "pgd-at"]
    pgd = {n: runs_value(tiny_run, m, "best", "pgd_acc") for n, m in (("s4d-standard", "standard"),
                                                                      ("s4d-pgd-at", "pgd-at"))}
    assert rows[1] == [["s4d", ""], [pgd["s4d-standard"], "num"], [pgd["s4d-pgd-at"], "num"]]
    assert rows[2][1][1] == "partial" and rows[2][1][0].startswith("pending 2/2")  # trained 2 epochs, no summary
    assert rows[2][2] == ["pending 0/2", "partial"]
    banner = page.evaluate("document.querySelector('.partial-banner').getBoundingClientRect().height")
    assert banner > 0
    page.evaluate("""(function () { var s = document.getElementById('grid-column');
      s.value = 'last.clean_acc'; s.dispatchEvent(new Event('change')); })()""")
    rows = page.evaluate(grid)
    assert rows[1][1][0] == runs_value(tiny_run, "standard", "last", "clean_acc")
    assert page.errors == []


def runs_value(tiny_run, cell, stage, key):

    return f"{100 * cell_folder.read_summary(tiny_run / cell)[stage][key]:.2f}"
