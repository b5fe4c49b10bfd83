#!/usr/bin/env bash
# Binder, checked the way repo2docker builds it: a fresh venv, `pip install -r binder/requirements.txt`
# from the repository root, `bash binder/postBuild` (model and corpus into a fresh WORKBENCH_HOME), then
# every notebook under papermill with small parameters: the notebook tests of the suite (the same small
# parameters CI uses; pytest is added to the venv to run them, it is not part of the image) and one
# `workbench report quickstart`.
#
#   bench/binder_venv.sh [VENV]        # default /tmp/binder-venv; VENV/log.txt keeps the timings
#
# pip reads its usual configuration (PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf), so the same script works
# against PyPI, a mirror, or a wheelhouse (PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR). Needs Python 3.11 (as
# binder/runtime.txt) as $PYTHON or python3.11, and about 3 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/binder-venv}
PYTHON=${PYTHON:-python3.11}
rm -rf "$VENV"
mkdir -p "$VENV"
LOG="$VENV/log.txt"
step() {  # step NAME COMMAND...: run it, and log its wall time
    local start=$SECONDS
    echo "== $1" | tee -a "$LOG"
    "${@:2}"
    echo "== $1: $((SECONDS - start)) s" | tee -a "$LOG"
}
export WORKBENCH_HOME="$VENV/workbench-home"  # nothing cached from earlier runs: as a fresh image
step venv "$PYTHON" -m venv "$VENV/env"
# shellcheck disable=SC1091
source "$VENV/env/bin/activate"  # repo2docker's pip and python are the image's environment's
step requirements pip install --retries 1 -r binder/requirements.txt
step postBuild bash binder/postBuild
step jupyterlab jupyter lab --version
# The tests that execute the notebooks (their fixtures run each through papermill with small parameters):
# tests/test_notebooks.py (01-03) and, by name, those of the other notebooks and of the course.
step pytest-install pip install --retries 1 "pytest>=8.0"
shopt -s nullglob
tests=(tests/test_notebooks.py tests/test_*_notebook.py tests/test_*_notebooks.py tests/test_course*.py tests/test_learn*.py)
shopt -u nullglob
step notebooks python -m pytest -q -p no:cacheprovider -o addopts="-ra" --durations=10 "${tests[@]}"
step report workbench report quickstart --out "$VENV/report" -p tokens 3000 -p ctx_len 64 -p d_sae 256 -p k 8 \
    -p epochs 2 -p batch_size 256 -p eval_tokens 504 -p n_features_shown 2
echo "binder venv OK: $VENV/env (timings in $LOG)"
