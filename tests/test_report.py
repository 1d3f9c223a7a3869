"""The HTML report, checked in a real headless Chromium: it loads, sorts and filters, and is not blank."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from test_explain import sharpen, shapes
from vitkit.data.imageset import load_images
from vitkit.explanation.attention import explain_images
from vitkit.explanation.report import write_report


def chromium() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
    if found is None:
        if os.environ.get("VITKIT_REQUIRE_CHROMIUM"):
            pytest.fail("VITKIT_REQUIRE_CHROMIUM is set but no chromium is installed")
        pytest.skip("chromium is not installed")
    return found


def run_chromium(browser: str, profile, *arguments: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_loads_sorts_and_filters_in_chromium(tiny_model, tmp_path):
    browser = chromium()
    model = sharpen(tiny_model())
    images, labels = shapes(count=9)
    result = explain_images(model, load_images((images, labels), (32, 32)), progress=False)
    report = write_report(result, tmp_path / "report.html", model, model_source="tiny.weights.h5", progress=False)
    page = report.read_text()
    assert "http://" not in page and "https://" not in page and "src=\"data:image/jpeg;base64," in page

    dom = run_chromium(browser, tmp_path / "profile", "--dump-dom", report.as_uri()).stdout
    assert 'data-ready="true"' in dom, "the report's script did not run"
    rows = re.findall(r"<tr data-index=\"(\d+)\"[^>]*>", dom)
    assert sorted(int(i) for i in rows) == list(range(1, 10))
    assert "showing 9 of 9" in dom

    wrong = int((~result.correct).sum())
    filtered = run_chromium(browser, tmp_path / "profile", "--dump-dom",
                            report.as_uri() + "#verdict=wrong&sort=confidence&order=desc").stdout
    assert f"showing {wrong} of 9" in filtered
    visible = re.findall(r"<tr data-index=\"\d+\"[^>]*data-confidence=\"([\d.]+)\"[^>]*data-verdict=\"wrong\">", filtered)
    assert len(visible) == wrong
    shown = [float(c) for c in re.findall(r"data-confidence=\"([\d.]+)\"", filtered)]
    assert shown == sorted(shown, reverse=True)

    screenshot = tmp_path / "report.png"
    run_chromium(browser, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,1600", report.as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 20
    assert (pixels.min(axis=2) < 200).mean() > 0.03  # more than a blank page with a few words


def test_report_without_labels_and_with_unknown_classes(tiny_model, tmp_path):
    model = sharpen(tiny_model())
    images, labels = shapes(count=3)
    unlabelled = explain_images(model, load_images(images, (32, 32)), progress=False)
    unlabelled.images.names = ['<img src=x onerror="alert(1)">.png', "b.png", "c.png"]
    page = write_report(unlabelled, tmp_path / "plain.html", model, progress=False).read_text()
    assert "No metrics: the images have no known classes" in page
    assert 'data-filter="verdict"' not in page and "<th>verdict" not in page
    assert '<img src=x' not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.png" in page
    assert page.count("<tr data-index=") == 3

    strange = explain_images(model, load_images((images, ["circle", "hexagon", "square"]), (32, 32)), progress=False)
    page = write_report(strange, tmp_path / "strange.html", model, progress=False).read_text()
    assert "some true classes are not among the model&#x27;s classes" in page
    assert '<option value="hexagon">' in page
