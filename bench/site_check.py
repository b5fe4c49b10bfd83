"""Open a static feature browser (``workbench export html``) from ``file://`` in headless Chromium and
show every feature's card in turn: each must have its two histograms, its logit table and all its
examples. Prints one JSON line: cards checked, how many failed, and the first failures.

The test suite does the same on a small synthetic site (tests/browser/test_feature_site.py); this
checks a real one, e.g. the 4,608 features of the default SAE:

    workbench export html build/01_quickstart --out site/
    python bench/site_check.py site/ build/01_quickstart/sae_0/feature_stats
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHECK = """
<pre id="wf-check">pending</pre>
<script>
(async () => {
  const EXPECTED = __EXPECTED__;
  const out = { cards: 0, failed: [], errors: [] };
  const view = document.querySelector(".wf-view");
  try {
    await wfSite.ready;
    for (const [f, want] of Object.entries(EXPECTED)) {
      await wfSite.show(Number(f));
      const card = view.querySelector(".wf-card");
      const got = {
        feature: Number(card?.dataset.feature),
        svgs: view.querySelectorAll(".wf-svg").length,
        paths: view.querySelectorAll(".wf-svg path").length,
        logits: view.querySelectorAll(".wf-logits code").length,
        examples: view.querySelectorAll(".wf-ex").length,
      };
      out.cards += 1;
      const ok = got.feature === Number(f) && got.svgs === 2 && got.paths >= 1 + (want.logits ? 1 : 0)
        && got.logits === want.logits && got.examples === want.examples;
      if (!ok && out.failed.length < 20) out.failed.push({ f: Number(f), got, want });
      else if (!ok) out.failed.push({ f: Number(f) });
    }
  } catch (error) {
    out.errors.push(String(error.stack || error));
  }
  document.getElementById("wf-check").textContent = JSON.stringify(out);
})();
</script>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", help="folder written by `workbench export html`")
    parser.add_argument("stats", help="the feature_stats folder it was written from")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()

    from workbench.features import FeatureStats

    stats = FeatureStats.load(args.stats)
    expected = {}
    for f in range(stats.n_features):
        card = stats.card(f)
        expected[f] = {"examples": sum(len(g["examples"]) for g in card["groups"]),
                       "logits": 20 if card["logits"] else 0}
    site = Path(args.site)
    page = site / "check.html"
    page.write_text((site / "index.html").read_text(encoding="utf-8")
                    .replace("</body>", CHECK.replace("__EXPECTED__", json.dumps(expected)) + "</body>"), encoding="utf-8")
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as profile:
            run = subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                                  "--window-size=1200,1000", "--virtual-time-budget=600000", "--dump-dom", page.as_uri()],
                                 capture_output=True, text=True, timeout=1800)
    finally:
        page.unlink()
    found = re.search(r'<pre id="wf-check">(.*?)</pre>', run.stdout, re.S)
    if not found or found.group(1) == "pending":
        raise SystemExit(f"the check did not finish; chromium said:\n{run.stderr[-2000:]}")
    result = json.loads(html.unescape(found.group(1)))
    print(json.dumps({"site": str(site), "features": stats.n_features, "cards_checked": result["cards"],
                      "failed": len(result["failed"]), "first_failures": result["failed"][:5], "errors": result["errors"],
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
