"""`engramdb report`: one self-contained HTML file whose SVG pictures render in a browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import engramdb
from engramdb.report import PICTURES, layout, write_report
from tests.cli_support import build_store, run

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    build_store(tmp / "a.engram")
    result = run("report", tmp / "a.engram", "-o", tmp / "report.html")
    assert result.exit_code == 0, result.output
    return tmp / "report.html"


def test_one_self_contained_file_with_every_picture(report: Path) -> None:
    html = report.read_text(encoding="utf-8")
    for pid in PICTURES:
        m = re.search(rf'<svg id="{pid}"[^>]*>\s*<title>[^<]+</title>(.*?)</svg>', html, re.S)
        assert m, pid
        assert re.search(r"<(rect|line|circle|text)\b", m.group(1)), pid
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network


def test_report_of_an_empty_store_still_draws(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "e.engram", encoder=engramdb.encoders.HashingEncoder(dim=8)):
        pass
    with engramdb.open(tmp_path / "e.engram") as mem:
        write_report(mem, tmp_path / "e.html")
    html = (tmp_path / "e.html").read_text(encoding="utf-8")
    assert all(f'id="{pid}"' in html for pid in PICTURES) and "no engrams yet" in html


def test_layout_is_deterministic_and_inside_the_unit_square() -> None:
    edges = [(0, 1, 1.0), (1, 2, 0.5), (2, 3, 0.2), (3, 0, 0.1)]
    a, b = layout(5, edges), layout(5, edges)
    assert (a == b).all() and a.min() >= 0 and a.max() <= 1


def test_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium)")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*cmd, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for pid in PICTURES:  # every picture survives parsing with child elements
        m = re.search(rf'<svg id="{pid}".*?</svg>', dom, re.S)
        assert m, pid
        assert len(re.findall(r"<(rect|line|circle)\b", m.group(0))) >= 2, pid
    shot = tmp_path / "shot.png"
    subprocess.run([*cmd, f"--screenshot={shot}", "--window-size=900,1800", report.as_uri()],
                   capture_output=True, timeout=60, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # not a blank page
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
