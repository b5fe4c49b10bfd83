"""What a reader of an executed notebook's HTML export sees: export it with plain
`jupyter nbconvert --to html`, add a measuring script, open it offline in headless Chromium, and read
back the JSON the script writes into ``<pre id="wb-measure">``."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path


def measure_export(notebook: Path, script: str, chromium, folder: Path) -> dict:
    """Export ``notebook`` into ``folder``, append ``script`` (it fills ``<pre id="wb-measure">``) and load it."""
    run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(notebook),
                          "--output-dir", str(folder)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    exported = folder / (notebook.stem + ".html")
    page = folder / "measure.html"
    page.write_text(exported.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    shown = chromium.run(folder / "profile", "--window-size=1280,1000", "--virtual-time-budget=10000", "--dump-dom",
                         page.as_uri())
    found = re.search(r'<pre id="wb-measure">(.*?)</pre>', shown.stdout, re.S)
    assert found and found.group(1) != "pending", f"the page did not finish loading; stderr:\n{shown.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1)))
