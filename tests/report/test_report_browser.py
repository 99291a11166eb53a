"""report.html in a real browser: headless Chromium loads every figure and none of them is blank."""
import html as html_lib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from detkit.report.report import write_report
from tests.report.test_report import FIGURES

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get "
                                                         "install chromium); the browser check of report.html skips")
WIDTH = 1280
# Appended to a copy of the page (the report itself has no script): where each figure lies and whether it decoded.
MEASURE = """<script>window.addEventListener('load', () => {
  const figures = [...document.querySelectorAll('img.figure')].map(img => {
    const r = img.getBoundingClientRect();
    return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height, img.complete && img.naturalWidth > 0];
  });
  document.body.setAttribute('data-layout', JSON.stringify({height: document.documentElement.scrollHeight, figures}));
});</script>"""


def chromium(*args, timeout=120):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
             "--virtual-time-budget=10000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


def test_every_figure_loads_and_is_not_blank_in_chromium(report_inputs, tmp_path):
    import cv2

    page = write_report(report_inputs, tmp_path / "out")
    measured = page.with_name("measured.html")
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium(f"--window-size={WIDTH},1000", "--dump-dom", measured.as_uri()).stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, f"Chromium did not run the page's load event:\n{dom[:500]}"
    layout = json.loads(html_lib.unescape(found.group(1)))
    assert len(layout["figures"]) == len(FIGURES)
    assert all(figure[4] for figure in layout["figures"]), "a figure did not decode"

    shot = tmp_path / "report.png"
    height = int(layout["height"])
    chromium(f"--window-size={WIDTH},{height}", f"--screenshot={shot}", page.as_uri())
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (height, WIDTH)
    for name, (x, y, w, h, _) in zip(FIGURES, layout["figures"]):
        assert w > 100 and h > 100, name
        area = pixels[int(y) + 2:int(y + h) - 2, int(x) + 2:int(x + w) - 2]
        assert len(np.unique(area.reshape(-1, 3), axis=0)) > 1, f"figure {name} is one flat colour"
