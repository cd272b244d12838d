"""report.html: written by every run and by ``advssm report --html``; self-contained; the sweep's grid."""
import json
import re
import sys
from pathlib import Path

from advssm.cli.execution import inline
from advssm.cli.experiment import cell_folder, jobs
from advssm.cli.results import report_html

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside the tests (--import-mode=importlib)
from html_sweep import partial_sweep  # noqa: E402


def _data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_every_run_writes_a_self_contained_page(tiny_run):
    page = (tiny_run / "report.html").read_text()
    # offline: no external script, style sheet, font or image; every link is relative
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "@import" not in page
    assert "url(" not in page
    for href in re.findall(r'href="([^"#][^"]*)"', page):
        assert not href.startswith("/") and (tiny_run / href).is_file(), href
    assert 'href="pgd-at/best.safetensors"' in page and 'href="standard/final_eval.json"' in page
    # the table: a header per Best / Last / Diff column, a row per cell with the numbers of report.md
    summary = cell_folder.read_summary(tiny_run / "pgd-at")
    assert page.count('<th data-type="number"') == 9 and "Best PGD-2" in page
    assert f'data-value="{summary["best"]["pgd_acc"]:.6f}"' in page
    # per cell: one epoch plot with its Best epoch marked, the AutoAttack components, the spec and environment
    assert page.count('<svg class="plot"') == 2 and page.count('class="best-epoch"') == 2
    assert f"Best (epoch {summary['best']['epoch']})" in page
    assert "apgd-dlr" in page and "square" in page and "queries 100" in page
    assert "Cell spec (cell.json)" in page and "Environment" in page and "[grid]" in page


def test_report_html_flag_and_atomic_rewrite(tiny_run, tmp_path, helpers):
    out = tmp_path / "cmp"
    result = helpers.invoke("report", tiny_run, tiny_run / "pgd-at", "--out", out, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["html"] is None and not (out / "report.html").exists()
    result = helpers.invoke("report", tiny_run, tiny_run / "pgd-at", "--out", out, "--html", "--json")
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert json.loads(result.stdout)["html"] == str(out / "report.html")
    # links lead from the comparison folder to the cells' files
    assert f'href="../{tiny_run.parent.name}/{tiny_run.name}/pgd-at/best.safetensors"' not in page  # not absolute
    for href in re.findall(r'href="([^"#][^"]*)"', page):
        assert (out / href).is_file(), href
    assert "tiny/pgd-at" in page and "pgd-at #2" in page  # both runs' rows, a repeated cell numbered
    # a page already there is rewritten with report.md even without --html, never left stale
    (out / "report.html").write_text("stale")
    assert helpers.invoke("report", tiny_run, "--out", out).exit_code == 0
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not list(out.glob(".report.html.*"))  # the atomic write's temporary file is gone


def test_sweep_grid_marks_partial_cells(tiny_run, tmp_path):
    folder = partial_sweep(tiny_run, tmp_path / "sweep")
    cells = {name: folder / name for name in ("s4d-standard", "s4d-pgd-at")}
    with jobs.locked(jobs.lock_path(folder, "s6-standard")):  # a job is training it
        page = report_html.render(folder, cells, "advssm run: sweep")
    grid = _data(page)["grid"]
    assert (grid["row_axis"], grid["col_axis"], grid["columns"]) == ("layer", "method", ["standard", "pgd-at"])
    assert [r["value"] for r in grid["tables"][0]["rows"]] == ["s4d", "s6"]
    states = {name: cell["state"] for name, cell in grid["cells"].items()}
    assert states == {"s4d-standard": "done", "s4d-pgd-at": "done", "s6-standard": "running", "s6-pgd-at": "pending"}
    assert grid["cells"]["s6-standard"]["progress"]["epochs_done"] == 2
    best = cell_folder.read_summary(tiny_run / "pgd-at")["best"]
    assert grid["cells"]["s4d-pgd-at"]["row"]["best"]["pgd_acc"] == best["pgd_acc"]
    assert "Partial results: 2 of 4 cells are complete (1 running, 1 pending)" in page
    # once nothing is left the banner goes
    done = report_html.render(tiny_run, {n: tiny_run / n for n in ("standard", "pgd-at")}, "t")
    assert "Partial results" not in done and _data(done)["grid"]["row_axis"] == "method"


def test_text_is_escaped_and_the_data_cannot_close_its_script(tiny_run, tmp_path):
    import shutil

    cell = tmp_path / "evil"
    shutil.copytree(tiny_run / "pgd-at", cell)
    summary = json.loads((cell / "summary.json").read_text())
    summary["warnings"] = ["<script>alert(1)</script> & </script>"]
    (cell / "summary.json").write_text(json.dumps(summary))
    page = report_html.render(tmp_path, {"<b>x</b>": cell}, "a <title>")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_the_robustness_curves_of_a_cell_are_shown(tiny_run, tmp_path, helpers):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert "Robustness curve" not in (run / "report.html").read_text()
    result = helpers.invoke("eval", run / "pgd-at" / "best.safetensors", "--eps", "0.05,0.1", "--attacks", "fgsm",
                            "--no-progress")
    assert result.exit_code == 0, result.output
    assert helpers.invoke("report", run).exit_code == 0  # the page there is rewritten
    page = (run / "report.html").read_text()
    assert "Robustness curve (advssm eval --eps)" in page and page.count('<svg class="plot"') == 3
    assert "pgd-at: accuracy against eps" in page
    (run / "standard" / "best.curve.json").write_text("{not json")  # a damaged file is named, not hidden
    assert helpers.invoke("report", run).exit_code == 0
    assert "best.curve.json is not a curve file of advssm eval" in (run / "report.html").read_text()


def test_status_links_the_page(tiny_run, helpers):
    result = helpers.invoke("status", tiny_run)
    assert result.exit_code == 0 and f"report: {(tiny_run / 'report.html').resolve().as_uri()}" in result.output
    data = json.loads(helpers.invoke("status", tiny_run, "--json").stdout)
    assert data["report_html"] == str(tiny_run / "report.html")


def test_aa_components_count_the_examples_they_broke(tiny_run):
    page = (tiny_run / "pgd-at" / "final_eval.json").read_text()
    final = json.loads(page)
    for stage, numbers in final["stages"].items():
        counts = report_html.aa_breakdown(tiny_run / "pgd-at", stage)
        broken_by_aa = sum(n for name, n in counts.items() if name != "pgd")
        # every example correct clean but not under AA was broken first by one AutoAttack component
        assert broken_by_aa == round(numbers["n"] * (numbers["clean_acc"] - numbers["aa_acc"]))
        assert set(counts) <= {part["name"] for part in final["protocol"]["components"]} | {"pgd"}
    html = (tiny_run / "report.html").read_text()
    for part in final["protocol"]["components"]:
        assert f"<tr><td>{part['name']}</td>" in html


def test_an_inline_run_shows_its_finished_cells_while_the_next_trains(tmp_path, helpers, monkeypatch):

    seen = {}
    real = inline.run_cell

    def spy(cell, cell_dir, *args, **kwargs):
        page = cell_dir.parent / "report.html"
        seen[cell.name] = page.read_text() if page.is_file() else None
        return real(cell, cell_dir, *args, **kwargs)

    monkeypatch.setattr(inline, "run_cell", spy)
    out = tmp_path / "run"
    assert helpers.invoke("run", *helpers.TINY, "--out", out).exit_code == 0
    assert seen["standard"] is None  # nothing finished before the first cell
    grid = _data(seen["pgd-at"])["grid"]
    assert {n: c["state"] for n, c in grid["cells"].items()} == {"standard": "done", "pgd-at": "pending"}
    assert "Partial results: 1 of 2 cells are complete (1 pending)" in seen["pgd-at"]
    assert "Partial results" not in (out / "report.html").read_text()  # the end of the run rewrites it whole
