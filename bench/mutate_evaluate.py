"""Apply one-line bugs to workbench/evaluate.py, one at a time, and list the tests each fails.

The suite must catch every one of these (issue: tests that can fail). Not a timed test: run it
after changing evaluate.py, and extend MUTATIONS when its code changes shape.

    python bench/mutate_evaluate.py [REPO] [--python PY] [--tests tests/test_evaluate.py]

REPO (default: this checkout) is copied to a scratch folder per mutation (without .venv, build,
.git, node_modules); the tests run there with PYTHONPATH pointing at the copy, so the
mutated evaluate.py is the one imported (checked). The unmutated copy runs first: it must pass.

Each mutation is a list of (regex, replacement) alternatives; the first that matches
evaluate.py is applied (all its matches). If none matches, the mutation is reported as
NOT APPLIED: add an alternative for the new code below.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MUTATIONS: dict[str, list[tuple[str, str]]] = {
    "a. next-token CE shifted by one": [
        (r"logits\[:, :-1\](\.float\(\)\.log_softmax)", r"logits[:, 1:]\1"),  # logits at t scored against t
        (r"ids\[:, 1:, None\]", "ids[:, :-1, None]"),
    ],
    "b. BOS position edited too": [
        (r"out\[:, 1:\] = edit\(x\[:, 1:\]\)", "out[:, :] = edit(x[:, :])"),
    ],
    "b2. BOS position skipped too in the skip baseline": [
        (r"\n *skipped\[:, 0\] = .*", ""),  # the line that puts the clean BOS back
    ],
    "c. mean ignored (zeros instead)": [
        (r"\bmean\.to\(", "(0 * mean).to("),
    ],
    "d. KL reversed": [
        (r"kl_div\((\w+), (\w+),", r"kl_div(\2, \1,"),
    ],
    "e. resid_pre skips block L, not L-1": [
        (r"point\.layer - 1\b", "point.layer"),
    ],
}
IGNORE = shutil.ignore_patterns(".venv", "build", ".git", "node_modules", "__pycache__", ".pytest_cache")


def mutate(source: str, alternatives: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in alternatives:
        mutated, count = re.subn(pattern, replacement, source)
        if count:
            return mutated
    return None


def run_tests(repo: Path, python: str, tests: str) -> tuple[list[str], str]:
    """Failed test ids (empty when all pass) and pytest's last line."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    where = subprocess.run([python, "-c", "import workbench.evaluate as e; print(e.__file__)"], cwd=repo, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve() == (repo / "workbench" / "evaluate.py").resolve(), f"imported {where}, not the copy"
    done = subprocess.run([python, "-m", "pytest", tests, "-q", "-p", "no:cacheprovider", "-o", "addopts=-rfE"],
                          cwd=repo, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    failed = [line.split(" ", 2)[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return failed, lines[-1] if lines else done.stderr[-500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", default=Path(__file__).resolve().parents[1], type=Path)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--tests", default="tests/test_evaluate.py")
    args = parser.parse_args()
    original = (args.repo / "workbench" / "evaluate.py").read_text()
    caught = 0
    with tempfile.TemporaryDirectory(prefix="mutate-") as scratch:
        for name, alternatives in {"(none: baseline)": [], **MUTATIONS}.items():
            copy = Path(scratch) / f"m{len(os.listdir(scratch))}"
            shutil.copytree(args.repo, copy, ignore=IGNORE)
            source = mutate(original, alternatives) if alternatives else original
            if source is None:
                print(f"{name}: NOT APPLIED (no pattern matches evaluate.py; add one to MUTATIONS)")
                continue
            (copy / "workbench" / "evaluate.py").write_text(source)
            failed, summary = run_tests(copy, args.python, args.tests)
            if not alternatives:
                print(f"baseline: {summary}" + "".join(f"\n  FAILS: {t}" for t in failed))
                continue
            caught += bool(failed)
            print(f"{name}: {'caught by' if failed else 'NOT CAUGHT'} ({summary})")
            for test in failed:
                print(f"  {test}")
    print(f"{caught}/{len(MUTATIONS)} mutations caught")
    return 0 if caught == len(MUTATIONS) else 1


if __name__ == "__main__":
    sys.exit(main())
