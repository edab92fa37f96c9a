"""The DBOS peer of the bench, without DBOS: URLs, skipping, the workload's output."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers import dbos as peer

PG = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": "stepflows",
    "USER": "postgres",
    "PASSWORD": "",
    "HOST": "127.0.0.1",
    "PORT": "5432",
}

OUTPUT = {
    "version": "3.4.0",
    "parallel_s": {"10": 0.3, "100": 4.5},
    "gather_s": {"10": 0.2},
    "sequential_ms_per_step": {"10": 4.0, "100": 2.0},
    "gather_error": None,
    "samples": {"parallel": {"10": [0.3, 0.31]}},
}


def no_subprocess(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"unexpected subprocess {args}")


# -- URLs -----------------------------------------------------------------------


def test_url_of_postgres_settings() -> None:
    assert peer.url_of_settings(PG) == "postgres://postgres@127.0.0.1:5432/stepflows"


def test_url_of_settings_quotes_the_password_and_keeps_ssl() -> None:
    settings = {**PG, "PASSWORD": "p@ss/word", "OPTIONS": {"sslmode": "require", "pool": True}}
    assert peer.url_of_settings(settings) == (
        "postgres://postgres:p%40ss%2Fword@127.0.0.1:5432/stepflows?sslmode=require"
    )


def test_url_of_settings_without_host_is_the_local_socket() -> None:
    settings = {**PG, "HOST": "", "PORT": "", "USER": ""}
    assert peer.url_of_settings(settings) == "postgres:///stepflows"


def test_url_of_settings_brackets_an_ipv6_host() -> None:
    assert peer.url_of_settings({**PG, "HOST": "::1"}) == "postgres://postgres@[::1]:5432/stepflows"


def test_url_of_sqlite_settings_is_none() -> None:
    settings = {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/x.sqlite3"}
    assert peer.url_of_settings(settings) is None


def test_url_of_django_matches_the_connection() -> None:
    from django.db import connection

    url = peer.database_url_of_django()
    assert (url is not None) == (connection.vendor == "postgresql")


def test_dbos_database_is_the_bench_database_with_a_suffix() -> None:
    url = "postgres://postgres@127.0.0.1:5432/sf_peer_dbos"
    assert peer.dbos_database_url(url) == "postgresql://postgres@127.0.0.1:5432/sf_peer_dbos_dbos"


def test_dbos_database_url_keeps_credentials_and_query() -> None:
    url = "postgresql://u:p%40@db.example:6543/bench?sslmode=require"
    assert (
        peer.dbos_database_url(url)
        == "postgresql://u:p%40@db.example:6543/bench_dbos?sslmode=require"
    )


def test_dbos_database_name_fits_postgres_identifiers() -> None:
    name = peer.dbos_database_name("x" * 80)
    assert len(name) == 63
    assert name.endswith("_dbos")


def test_dbos_database_url_of_sqlite_is_a_skip() -> None:
    with pytest.raises(peer.Skip, match="PostgreSQL"):
        peer.dbos_database_url("sqlite:///var/bench/stepflows.sqlite3")


# -- measure: skipped ---------------------------------------------------------


def test_measure_on_sqlite_is_skipped_without_installing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    lines: list[str] = []
    result = peer.measure("sqlite:///tmp/bench.sqlite3", [10], [10], 1, 0, lines.append)
    assert set(result) == {"skipped"}
    assert "PostgreSQL" in result["skipped"]
    assert any("skipped" in line for line in lines)


def test_measure_skips_when_pip_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        failed = "pip" in cmd
        return subprocess.CompletedProcess(cmd, 1 if failed else 0, "", "ERROR: no network\n")

    monkeypatch.setattr(subprocess, "run", run)
    lines: list[str] = []
    result = peer.measure("postgres://u@h/db", [10], [10], 1, 0, lines.append, venv=tmp_path)
    assert result == {"skipped": "pip install failed (exit 1)"}
    assert "dbos: pip install: ERROR: no network" in lines


def test_measure_skips_when_the_workload_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[str] = []
    monkeypatch.setattr(peer, "ensure_venv", lambda venv, log: Path("/venv/bin/python"))
    monkeypatch.setattr(peer, "recreate_database", lambda url, name: None)
    monkeypatch.setattr(peer, "drop_database", lambda url, name: dropped.append(name))
    stderr = "".join(f"line {i}\n" for i in range(30)) + "RuntimeError: boom\n"
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", stderr),
    )
    lines: list[str] = []
    result = peer.measure("postgres://u@h/bench", [10], [10], 1, 0, lines.append)
    assert result == {"skipped": "workload failed (exit 1)"}
    assert "dbos: workload: RuntimeError: boom" in lines
    assert "dbos: workload: line 0" not in lines  # only the tail
    assert dropped == ["bench_dbos"]


def test_measure_returns_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(peer, "ensure_venv", lambda venv, log: Path("/venv/bin/python"))
    monkeypatch.setattr(peer, "recreate_database", lambda url, name: seen.update(created=name))
    monkeypatch.setattr(peer, "drop_database", lambda url, name: seen.update(dropped=name))

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0, json.dumps(OUTPUT) + "\n", "")

    monkeypatch.setattr(subprocess, "run", run)
    result = peer.measure("postgres://u@h:5432/bench", [10, 100], [10, 100], 3, 1, lambda s: None)
    assert result == {
        "version": "3.4.0",
        "parallel_s": {10: 0.3, 100: 4.5},
        "gather_s": {10: 0.2},
        "sequential_ms_per_step": {10: 4.0, 100: 2.0},
    }
    assert seen["created"] == seen["dropped"] == "bench_dbos"
    cmd = seen["cmd"]
    assert cmd[:2] == ["/venv/bin/python", "-I"]
    assert cmd[cmd.index("--database-url") + 1] == "postgresql://u@h:5432/bench_dbos"
    assert cmd[cmd.index("--parallel-sizes") + 1] == "10,100"


def test_a_matching_venv_is_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(peer, "installed_version", lambda venv: peer.DBOS_VERSION)
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert peer.ensure_venv(tmp_path, lambda s: None) == tmp_path / "bin" / "python"


def test_the_workload_runs_without_dbos_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOS__CONDUCTOR_KEY", "secret")
    monkeypatch.setenv("DBOS_SYSTEM_DATABASE_URL", "postgresql://elsewhere/x")
    env = peer.env()
    assert not [k for k in env if k.startswith("DBOS")]
    assert "PATH" in env


# -- the workload's output and imports ------------------------------------------


def test_parse_output_takes_the_json_line_among_others() -> None:
    stdout = "some banner\n" + json.dumps(OUTPUT) + "\n\n"
    parsed = peer.parse_output(stdout)
    assert parsed["parallel_s"] == {10: 0.3, 100: 4.5}
    assert parsed["sequential_ms_per_step"] == {10: 4.0, 100: 2.0}
    assert parsed["version"] == "3.4.0"


def test_parse_output_without_figures_is_an_error() -> None:
    with pytest.raises(ValueError):
        peer.parse_output('Traceback\n{"other": 1}\n')


def test_the_workload_imports_only_the_standard_library_and_dbos() -> None:
    tree = ast.parse(peer.WORKLOAD.read_text())
    modules = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert modules - {"__future__"} - set(sys.stdlib_module_names) == {"dbos"}
