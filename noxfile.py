"""The fast suite on every supported Django and Python but the full suite's own.

`make test` runs the whole suite on Django 5.2 and Python 3.11, once per backend.
`nox` (`make test-matrix`) runs the fast suite on each other combination, each in a
fresh venv under .nox/: Django 5.2, 6.0 and 6.1, each on Python 3.12 and 3.13. The
fast suite needs no server: `manage.py check` and `makemigrations --check`, the unit
tests (the engine in process among them), the admin pages, the store's statements,
the smoke tests (marked `smoke`: runs on a real Celery worker, on SQLite and the
filesystem broker) and the sample project's in-process tests.

    nox                                          # all six combinations
    nox -s "fast(python='3.13', django='6.1')"   # one
    nox -p 3.12 -- -x                            # after --: arguments to each pytest
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

#: (Python, Django) pairs. Django 5.2 on Python 3.11 is the full suite's (`make test`, every
#: backend); Django 6.0 and 6.1 need Python 3.12 or later.
COMBINATIONS = [
    ("3.12", "5.2"),
    ("3.13", "5.2"),
    ("3.12", "6.0"),
    ("3.13", "6.0"),
    ("3.12", "6.1"),
    ("3.13", "6.1"),
]

#: Integration tests that start no worker.
STORE_TESTS = ("tests/integration/test_store.py", "tests/integration/test_sending.py")

nox.options.sessions = ["fast"]
nox.options.default_venv_backend = "venv"
# A combination whose Python is missing fails instead of being skipped: it was not tested.
nox.options.error_on_missing_interpreters = True

# The servers a developer points the full suite at stay out of the matrix: it runs on the
# embedded default (SQLite + the filesystem broker, under var/test-runs/).
EMBEDDED: dict[str, str | None] = {
    "STEPFLOWS_TEST_DATABASE_URL": None,
    "STEPFLOWS_TEST_BROKER_URL": None,
    "DATABASE_URL": None,
    "CELERY_BROKER_URL": None,
}


def _put_pyenv_pythons_on_path(versions: list[str]) -> None:
    """Let nox find pyenv's interpreters by name (`python3.12`).

    nox looks each interpreter up on PATH, where pyenv has shims that answer only
    for the versions selected with `pyenv global` / `pyenv local`. The newest
    installed release of each version is put first on PATH instead.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = []
    for version in versions:
        releases = [
            path
            for path in root.glob(f"{version}.*")
            if re.fullmatch(rf"{re.escape(version)}\.\d+", path.name)
            and (path / "bin" / f"python{version}").exists()
        ]
        if releases:
            newest = max(releases, key=lambda path: int(path.name.rsplit(".", 1)[1]))
            found.append(str(newest / "bin"))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_put_pyenv_pythons_on_path(sorted({python for python, _ in COMBINATIONS}))


@nox.session
@nox.parametrize("python,django", COMBINATIONS)
def fast(session: nox.Session, django: str) -> None:
    """The fast suite on one Python and one Django release line."""
    # The pip that venv brings (23.2 with Python 3.12.1) takes twice as long to resolve
    # the dev tools as a current one: upgrading it first is quicker overall.
    session.install("--upgrade", "pip")
    session.install("-e", ".[dev]", f"django=={django}.*")
    session.run("python", "manage.py", "check", "--fail-level", "WARNING", env=EMBEDDED)
    session.run("python", "manage.py", "makemigrations", "--check", "--dry-run", env=EMBEDDED)
    pytest = ("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)
    # No worker: the unit tests, the admin's pages, and the store's statements and sending
    # (the SQL and the ORM calls a new Django could change), in one test database.
    in_process = ("tests/unit", "tests/admin", *STORE_TESTS)
    session.run(*pytest, *in_process, "-m", "not worker", env=EMBEDDED)
    # On real workers: the smoke tests only.
    session.run(*pytest, "tests/integration", "-m", "smoke", env=EMBEDDED)
    with session.chdir("samples/shop"):
        session.run(*pytest, "shop/tests/test_in_process.py", env=EMBEDDED)
