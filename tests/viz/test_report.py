"""udi report: one self-contained HTML page whose embedded images all decode."""

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from udi.cli import main
from udi.viz.report import NUM_IMAGES


class Page(HTMLParser):
    """Collects <img> sources, <script>/<link> tags and the visible text of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.external, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("script", "link") or (tag == "img" and not attrs["src"].startswith("data:")):
            self.external.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page, " ".join(page.text)


def decoded_sizes(page):
    sizes = []
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix):], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
            sizes.append(im.size)
    return sizes


def test_report_runs_the_evaluation_when_asked_and_shows_it(tiny_run, capsys):
    assert main(["report", str(tiny_run), "--data", "digits", "--eval", "knn"]) == 0
    path = tiny_run / "report.html"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report"] == str(path)
    knn = json.loads((tiny_run / "eval" / "metrics.json").read_text())["knn"]["cls"]["knn_top1_k20"]
    page, text = parse(path)
    assert page.external == []  # self-contained
    sizes = decoded_sizes(page)
    assert len(sizes) == 1 + NUM_IMAGES + 1  # curves, one attention grid per image, PCA
    assert all(w > 100 and h > 100 for w, h in sizes)
    assert "eval/metrics.json" in text and "knn k20 [cls]" in text and f"{knn:.2f}" in text
    source = json.loads((tiny_run / "eval" / "metrics.json").read_text())["source"]
    assert "measured on" in text and str(tiny_run.resolve()) in text and source["date"] in text  # its source
    assert f"{source['images_used']['train']} / {source['images_used']['val']}" in text
    assert "too small to look at: built-in photos (astronaut, coffee, chelsea)" in text  # 8 px digits
    assert "patch_size: 4" in text and "SRS rows" in text  # the config, the SRS note


def test_report_without_eval_results_says_so_and_shows_the_command(tiny_run, tmp_path, capsys):
    (tiny_run / "checkpoint.pt").unlink()  # backbone only: no SRS module
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(tiny_run), "--out", str(out)]) == 0
    page, text = parse(out)
    assert len(decoded_sizes(page)) == 1 + NUM_IMAGES + 1
    assert f"No evaluation results found in {tiny_run}" in text
    assert f"udi eval --weights {tiny_run} --data scenes --out {tiny_run / 'eval'}" in text
    assert "No SRS module in this run" in text


def test_report_of_a_folder_that_is_not_a_run(tmp_path, err_contains):
    assert main(["report", str(tmp_path)]) == 2
    assert err_contains("is not a run directory: it has neither backbone.safetensors nor checkpoint.pt")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_loads_in_a_headless_browser(tiny_run, tmp_path, capsys):
    assert main(["report", str(tiny_run)]) == 0
    # A copy of the page with a script that records, once loaded, how many images the browser decoded.
    page = tmp_path / "checked.html"
    page.write_text((tiny_run / "report.html").read_text() + (
        "<script>window.addEventListener('load', () => document.body.setAttribute('data-decoded', "
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length));</script>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    expected = 1 + NUM_IMAGES + 1
    assert dom.returncode == 0 and "udi report" in dom.stdout and dom.stdout.count("<img") == expected
    assert f'data-decoded="{expected}"' in dom.stdout
