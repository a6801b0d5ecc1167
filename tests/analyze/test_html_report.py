"""The HTML report rendered in a real headless browser (Debian's chromium): the chart canvas is drawn, the
first-divergence card names the planted fault, a screenshot is non-empty; text from files is escaped; the page
loads nothing from the network; ``parity compare --html`` and ``parity report --html``."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner

import analyze
from workflows.cli.main import cli
from workflows.demo import plant_fault
from analyze.render.html import render_html, write_html

from .conftest import write_dump
from .torch_dumps import capture, input_set

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def _read(path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _chromium(*args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run 'make chromium' (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120)


@pytest.fixture(scope="module")
def fault_report(tiny_llama, corpus_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    inputs = input_set(tiny_llama, corpus_file, str(folder / "inputs.h5"))
    ref = capture(tiny_llama, inputs, str(folder / "ref.h5"))
    faulty = plant_fault(tiny_llama, str(folder / "faulty"), "model.layers.1.mlp.down_proj.weight")
    cand = capture(faulty, inputs, str(folder / "cand.h5"))
    return folder, ref, cand


def test_rendered_in_chromium(fault_report, tmp_path):
    folder, ref, cand = fault_report
    out = str(tmp_path / "report.html")
    res = CliRunner().invoke(cli, ["compare", ref, cand, "--inputs", str(folder / "inputs.h5"), "--html", out,
                                   "-o", str(tmp_path / "report.json")])
    assert res.exit_code == 1 and f"html: {out}" in res.output
    page = _read(out)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from the network
    assert "Chart.js v4" in page
    dom = _chromium("--dump-dom", f"file://{out}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.search(r'<canvas id="error-curve"[^>]*data-rendered="1"', html) or \
        re.search(r'<canvas[^>]*data-rendered="1"[^>]*id="error-curve"', html), "the chart script did not run"
    card = html[html.index('id="first-divergence"'):]
    assert "model.layers.1.mlp.down_proj:out" in card[:3000]
    assert 'id="gain-ranking"' in html and 'id="worst-elements"' in html and 'id="logits"' in html
    png = str(tmp_path / "shot.png")
    shot = _chromium(f"--screenshot={png}", "--window-size=1400,1000", f"file://{out}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    with open(png, "rb") as fh:
        data = fh.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # the chart area is drawn: the canvas region of the screenshot is not one flat colour
    assert len(set(data[1000:20000])) > 50


def test_parity_report_renders_saved_report(fault_report, tmp_path, parity_exe):
    folder, ref, cand = fault_report
    report = analyze.compare(ref, cand)
    path = str(tmp_path / "r.json")
    report.write_json(path)
    out = str(tmp_path / "saved.html")
    proc = subprocess.run([parity_exe, "report", path, "--html", out], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "verdict: diverged" in proc.stdout and os.path.getsize(out) > 200_000
    page = _read(out)
    assert "model.layers.1.mlp.down_proj:out" in page and "Worst elements" in page
    # a schema 1.0 report (no localization) is localized from its records
    doc = json.loads(_read(path))
    doc["schema_version"] = "1.0"
    doc.pop("localization"), doc.pop("thresholds")
    with open(path, "w") as fh:
        json.dump(doc, fh)
    res = CliRunner().invoke(cli, ["report", path, "--html", out])
    assert res.exit_code == 0, res.output
    assert "#{} model.layers.1.mlp.down_proj:out".format(report.first_divergence["index"]) in _read(out)
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "missing.json"), "--html", out])
    assert res.exit_code == 3 and "report not found" in res.output
    assert CliRunner().invoke(cli, ["report", "--help"]).exit_code == 0


def test_site_names_are_escaped(tmp_path, input_set):
    _, sha, _ = input_set
    evil = 'x</script><script>alert("pwned")</script><img src=x onerror=alert(1)>'
    a = np.ones((2, 3), np.float32)
    ref = write_dump(tmp_path / "ref.h5", [(f"s0/t0/{evil}:out#0", a)], sha=sha)
    cand = write_dump(tmp_path / "cand.h5", [(f"s0/t0/{evil}:out#0", a * 1.5),
                                             (f"s0/t0/<b>only</b>:out#0", a)], sha=sha, label='<i>lab</i>')
    page = render_html(analyze.compare(ref, cand))
    body = page.split("<script>")[0]  # everything before the inlined scripts: markup only
    assert "<img" not in body and "<b>only</b>" not in body and "<i>lab</i>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "&lt;b&gt;only&lt;/b&gt;" in body
    data = re.search(r'<script type="application/json" id="curve-data">(.*?)</script>', page, re.S).group(1)
    assert "</script" not in data and "<" not in data
    assert json.loads(data)["sites"][0]["site"].startswith("x</script>")
    out = str(tmp_path / "evil.html")
    write_html(analyze.compare(ref, cand), out)
    dom = _chromium("--dump-dom", f"file://{out}").stdout
    # no element came out of the names: an <img> or a <script>alert would serialize as such in the DOM
    assert "<img" not in dom and "<script>alert" not in dom and 'data-rendered="1"' in dom


def test_a_replay_draws_the_local_error_curve_and_names_the_module_first(fault_report, tiny_llama, tmp_path):
    folder, ref, cand = fault_report
    out = str(tmp_path / "replay.html")
    res = CliRunner().invoke(cli, ["compare", ref, cand, "--replay", tiny_llama, "--html", out,
                                   "--csv", str(tmp_path / "csv")])
    assert res.exit_code == 1, res.output
    assert "error introduced here: model.layers.1.mlp.down_proj (" in res.output
    assert "INTRO model.layers.1.mlp.down_proj  local rel_l2=" in res.output
    html = _chromium("--dump-dom", f"file://{out}").stdout
    assert re.search(r'<canvas id="local-curve"[^>]*data-rendered="1"', html) or \
        re.search(r'<canvas[^>]*data-rendered="1"[^>]*id="local-curve"', html), "the local-error chart did not run"
    card = html[html.index('id="introduced"'):]
    assert "Error introduced here" in card[:400] and "model.layers.1.mlp.down_proj" in card[:600]
    assert "Top error gain" not in html  # the replay answers "where"
    with open(tmp_path / "csv" / "local.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["module"] == "model.layers.1.mlp.down_proj" and rows[0]["introduced"] == "1"
    assert float(rows[0]["local_rel_l2"]) > float(rows[0]["limit"]) > 0


def test_without_replay_the_page_says_what_replay_would_add(fault_report, tmp_path):
    folder, ref, cand = fault_report
    out = str(tmp_path / "plain.html")
    CliRunner().invoke(cli, ["compare", ref, cand, "--html", out])
    page = _read(out)
    assert "Ranked by accumulated error only" in page and "--replay REF_MODEL" in page
