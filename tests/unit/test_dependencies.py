"""The package's dependency rules (CONTRIBUTING.md), checked on every import statement.

Function-level imports count too: a rule broken inside a function is still a
cycle waiting to happen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "stepflows"

# module prefix -> modules (prefixes) it must never import
RULES: dict[str, tuple[str, ...]] = {
    "stepflows.exceptions": ("stepflows.",),
    "stepflows.clock": ("stepflows.",),
    "stepflows.conf": ("stepflows.",),
    "stepflows.events": ("stepflows.",),
    "stepflows.flow": ("stepflows.",),
    "stepflows.celery_config": ("stepflows.",),
    "stepflows.worker_connections": ("stepflows.",),
    "stepflows.serialization": (
        "stepflows.engine",
        "stepflows.store",
        "stepflows.api",
        "stepflows.tasks",
    ),
    "stepflows.dispatch": (
        "stepflows.engine",
        "stepflows.store",
        "stepflows.api",
        "stepflows.tasks",
        "stepflows.models",
        "stepflows.sending",
    ),
    "stepflows.store": (
        "stepflows.engine",
        "stepflows.api",
        "stepflows.tasks",
        "stepflows.sending",
        "stepflows.admin",
    ),
    "stepflows.sending": ("stepflows.engine", "stepflows.api", "stepflows.tasks"),
    "stepflows.engine": ("stepflows.api", "stepflows.tasks", "stepflows.admin"),
    "stepflows.models": ("stepflows.engine", "stepflows.store", "stepflows.api"),
    "stepflows.registry": ("stepflows.engine", "stepflows.store", "stepflows.api"),
}

# Only these may import stepflows.api (besides users' code): the package's own
# __init__ re-exports send/asend.
API_USERS = (
    "stepflows.admin",
    "stepflows.management",
    "stepflows.api",
    "stepflows.testing",
)
# Nothing imports the task module: Celery finds it, dispatch names tasks by string.
TASK_USERS = ("stepflows.tasks", "stepflows.apps")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {i for i in found if i.startswith("stepflows")}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_follows_the_dependency_rules(path):
    name = module_name(path)
    used = imports(path)
    for owner, forbidden in RULES.items():
        if name == owner or name.startswith(owner + "."):
            bad = sorted(
                u for u in used for f in forbidden if (u + ".").startswith(f) and u != name
            )
            assert not bad, f"{name} must not import {bad} (see CONTRIBUTING.md)"
    if name != "stepflows" and not name.startswith(API_USERS):
        assert not [u for u in used if u == "stepflows.api" or u.startswith("stepflows.api.")]
    if not name.startswith(TASK_USERS):
        assert not [u for u in used if u == "stepflows.tasks"], f"{name} imports stepflows.tasks"


# Installed with the dev tools only: the repository's bench and tests use them, the library
# must run without them (see pyproject.toml).
NOT_AT_RUN_TIME = ("bench", "django_celery_results", "project", "tests")


def top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_imports_nothing_the_wheel_does_not_bring(path):
    bad = sorted(top_level_imports(path) & set(NOT_AT_RUN_TIME))
    assert not bad, f"{module_name(path)} imports {bad}, which an installed stepflows lacks"
