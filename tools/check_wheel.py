"""Check what the wheel in a dist folder holds: the stepflows package and its metadata only.

``python tools/check_wheel.py dist`` (``make package`` runs it after ``python -m
build``). It fails, naming the files, when the wheel

- holds anything but ``stepflows/`` and its ``.dist-info`` (the bench, the example
  project, the tests and the sample project stay in the repository);
- lacks a file of the package: every module, migration and template under
  ``stepflows/`` in this checkout, and ``py.typed``;
- requires at run time a package only the dev tools need, or has lost the
  pytest plugin's entry point.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "stepflows"
#: Installed with the dev tools only (see pyproject.toml): never a plain requirement.
DEV_ONLY = ("django-celery-results", "pytest", "nox", "build", "twine")
ENTRY_POINT = "stepflows = stepflows.pytest_plugin"


def shipped_files(root: Path = ROOT) -> set[str]:
    """The files of the package in this checkout that the wheel must hold."""
    package = root / PACKAGE
    files = [package / "py.typed", *package.rglob("*.py")]
    for data in ("templates", "static"):
        files += [p for p in (package / data).rglob("*") if p.is_file()]
    return {p.relative_to(root).as_posix() for p in files if "__pycache__" not in p.parts}


def problems(wheel: Path, expected: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        dist_info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")), "")
        if not dist_info:
            return ["no .dist-info/METADATA"]
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        points = f"{dist_info}/entry_points.txt"
        entry_points = archive.read(points).decode() if points in names else ""
    found: list[str] = []
    stray = sorted(n for n in names if n.split("/")[0] not in (PACKAGE, dist_info))
    if stray:
        found.append(f"files outside {PACKAGE}/ and {dist_info}/: {', '.join(stray)}")
    missing = sorted(expected - set(names))
    if missing:
        found.append(f"files of the package missing: {', '.join(missing)}")
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        run_time = requirement.marker is None or "extra" not in str(requirement.marker)
        if run_time and canonicalize_name(requirement.name) in DEV_ONLY:
            found.append(f"a run-time requirement only the dev tools need: {line}")
    if ENTRY_POINT not in entry_points:
        found.append(f"entry point missing: [pytest11] {ENTRY_POINT}")
    return found


def main(argv: list[str]) -> int:
    dist = Path(argv[1] if len(argv) > 1 else "dist")
    wheels = sorted(dist.glob(f"{PACKAGE}-*.whl"))
    if len(wheels) != 1:
        print(f"check_wheel: expected one {PACKAGE} wheel in {dist}/, found {len(wheels)}")
        return 1
    [wheel] = wheels
    found = problems(wheel, shipped_files())
    for line in found:
        print(f"check_wheel: {wheel.name}: {line}")
    if not found:
        with zipfile.ZipFile(wheel) as archive:
            count = len([n for n in archive.namelist() if not n.endswith("/")])
        print(f"check_wheel: {wheel.name}: {count} files, {PACKAGE}/ and its metadata only")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
