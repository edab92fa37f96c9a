"""DBOS Transact as a peer of the bench: the same workloads, on the same PostgreSQL server.

DBOS is no dependency of stepflows: it is installed, on first use, into a
virtual environment of its own (``var/peers/dbos-venv``), and the workloads
(:mod:`bench.peers.dbos_workload`) run as a subprocess of that environment's
python, which prints one JSON line of results. DBOS keeps its state in a
system database of its own, named after the bench's database with ``_dbos``
appended; it is dropped and created afresh around each measurement so that
runs do not accumulate.

Anything that stops the peer (SQLite, no network for pip, a failing workload)
gives ``{"skipped": reason}``: the bench goes on without the column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

#: The DBOS Transact release the figures are for.
DBOS_VERSION = "3.4.0"
ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "var" / "peers" / "dbos-venv"
WORKLOAD = Path(__file__).with_name("dbos_workload.py")
SUFFIX = "_dbos"
#: PostgreSQL cuts identifiers at 63 bytes: a longer name loses its suffix, not its stem.
MAX_NAME = 63
PIP_TIMEOUT = 900.0
RUN_TIMEOUT = 3600.0
STDERR_TAIL = 20

POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql")
#: Connection options passed on from Django's OPTIONS: the ones libpq reads from a URL.
LIBPQ_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout")


class Skip(Exception):
    """The peer cannot be measured here; the message says why."""


# -- database URLs ------------------------------------------------------------


def is_postgres(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme in POSTGRES_SCHEMES or scheme.startswith("postgresql+")


def database_name(url: str) -> str:
    """The database a ``postgres://`` URL names (libpq's default, ``postgres``, if none)."""
    return unquote(urlsplit(url).path.lstrip("/")) or "postgres"


def dbos_database_name(name: str) -> str:
    """DBOS's system database beside the bench's ``name``."""
    return name[: MAX_NAME - len(SUFFIX)] + SUFFIX


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name``, with the ``postgresql`` scheme that libpq and DBOS read."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, "/" + quote(name, safe=""), parts.query, ""))


def dbos_database_url(url: str) -> str:
    """The URL of DBOS's system database, given the bench's; :class:`Skip` if not PostgreSQL."""
    if not is_postgres(url):
        raise Skip(f"DBOS runs on PostgreSQL; the bench's database is {urlsplit(url).scheme}")
    return with_database(url, dbos_database_name(database_name(url)))


def url_of_settings(settings: Mapping[str, Any]) -> str | None:
    """A ``postgres://`` URL for Django connection settings, None if not PostgreSQL.

    An empty HOST stays empty: for libpq, as for Django, that is the local socket.
    """
    if not str(settings.get("ENGINE", "")).endswith("postgresql"):
        return None
    user = quote(settings.get("USER") or "", safe="")
    password = quote(settings.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings.get("HOST") or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    options = settings.get("OPTIONS") or {}
    query = urlencode({k: options[k] for k in LIBPQ_OPTIONS if k in options})
    name = quote(settings.get("NAME") or "postgres", safe="")
    return f"postgres://{auth}{host}{port}/{name}" + (f"?{query}" if query else "")


def database_url_of_django() -> str | None:
    """The bench's database (Django's default connection) as a URL, None if not PostgreSQL."""
    from django.db import connections

    return url_of_settings(connections["default"].settings_dict)


def recreate_database(url: str, name: str) -> None:
    """Drop database ``name`` (ending its sessions) and create it empty, on ``url``'s server."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(url, database_name(url)), autocommit=True) as conn:
        drop_database_on(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(with_database(url, database_name(url)), autocommit=True) as conn:
        drop_database_on(conn, name)


def drop_database_on(conn: Any, name: str) -> None:
    from psycopg import sql

    # FORCE (PostgreSQL 13+) ends sessions a killed workload may have left behind.
    force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name)))


# -- the virtual environment -------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_version(venv: Path) -> str | None:
    """The ``dbos`` version installed in ``venv``, None if there is none."""
    python = venv_python(venv)
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-I", "-c", "import importlib.metadata as m; print(m.version('dbos'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def run_or_skip(cmd: list[str], what: str, log: Callable[[str], None], timeout: float) -> str:
    """Run ``cmd``; its stdout, or :class:`Skip` with its stderr's tail in the log."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    except subprocess.TimeoutExpired as e:
        log_tail(log, what, e.stderr)
        raise Skip(f"{what}: no end after {timeout:.0f} s") from e
    except OSError as e:
        raise Skip(f"{what}: {e}") from e
    if done.returncode != 0:
        log_tail(log, what, done.stderr)
        raise Skip(f"{what} failed (exit {done.returncode})")
    return done.stdout


def log_tail(log: Callable[[str], None], what: str, stderr: str | bytes | None) -> None:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    for line in text.splitlines()[-STDERR_TAIL:]:
        log(f"dbos: {what}: {line}")


def ensure_venv(venv: Path, log: Callable[[str], None]) -> Path:
    """The python of a virtual environment with ``dbos`` at the pinned version.

    Reused when its version matches; otherwise made afresh (``--clear``) and
    installed with pip, which needs the package index.
    """
    if installed_version(venv) == DBOS_VERSION:
        return venv_python(venv)
    log(f"dbos: installing dbos=={DBOS_VERSION} into {venv}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    run_or_skip([sys.executable, "-m", "venv", "--clear", str(venv)], "venv", log, 300)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run_or_skip([*pip, f"dbos=={DBOS_VERSION}"], "pip install", log, PIP_TIMEOUT)
    found = installed_version(venv)
    if found != DBOS_VERSION:
        raise Skip(f"dbos {found} installed, not {DBOS_VERSION}")
    return venv_python(venv)


def env() -> dict[str, str]:
    """The caller's environment without DBOS's own variables.

    ``DBOS__CLOUD``, ``DBOS__CONDUCTOR_KEY``, ``DBOS_SYSTEM_DATABASE_URL`` and
    the like would connect the workload to DBOS Cloud or change its database.
    """
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("DBOS")}


# -- the workload -------------------------------------------------------------


def workload_command(
    python: Path,
    dbos_url: str,
    parallel_sizes: list[int],
    sequential_sizes: list[int],
    repeats: int,
    warmup: int,
) -> list[str]:
    # -I: no script folder on sys.path, where bench/peers/dbos.py would shadow the package.
    return [
        str(python),
        "-I",
        str(WORKLOAD),
        "--database-url",
        dbos_url,
        "--parallel-sizes",
        ",".join(map(str, parallel_sizes)),
        "--sequential-sizes",
        ",".join(map(str, sequential_sizes)),
        "--repeats",
        str(repeats),
        "--warmup",
        str(warmup),
    ]


def by_size(figures: Mapping[str, Any]) -> dict[int, float]:
    return {int(n): float(v) for n, v in figures.items()}


def parse_output(stdout: str) -> dict[str, Any]:
    """The workload's JSON line (the last line that is one), sizes as ints.

    ``{"version", "parallel_s", "gather_s", "sequential_ms_per_step", "samples",
    "gather_error"}``; ValueError if no line carries the figures.
    """
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "parallel_s" in data:
            return {
                "version": str(data.get("version", "?")),
                "parallel_s": by_size(data["parallel_s"]),
                "gather_s": by_size(data.get("gather_s") or {}),
                "sequential_ms_per_step": by_size(data.get("sequential_ms_per_step") or {}),
                "samples": data.get("samples") or {},
                "gather_error": data.get("gather_error"),
            }
    raise ValueError("the DBOS workload printed no result line")


def log_samples(parsed: Mapping[str, Any], log: Callable[[str], None]) -> None:
    for kind, sizes in parsed["samples"].items():
        for n, seconds in sizes.items():
            log(f"dbos {kind} N={n}: {[round(s, 4) for s in seconds]}")
    if parsed["gather_error"]:
        log(f"dbos: gather not measured: {parsed['gather_error']}")


def measure(
    database_url: str,
    parallel_sizes: list[int],
    sequential_sizes: list[int],
    repeats: int,
    warmup: int,
    log: Callable[[str], None],
    *,
    venv: Path = VENV,
) -> dict[str, Any]:
    """DBOS's figures for the bench's workloads, or ``{"skipped": reason}``.

    ``{"version", "parallel_s": {N: s}, "gather_s": {N: s},
    "sequential_ms_per_step": {N: ms}}``, medians of ``repeats`` after
    ``warmup``. Never raises for a missing peer: the bench goes on without it.
    """
    try:
        dbos_url = dbos_database_url(database_url)
        python = ensure_venv(venv, log)
        name = dbos_database_name(database_name(database_url))
        recreate_database(database_url, name)
        try:
            cmd = workload_command(
                python, dbos_url, parallel_sizes, sequential_sizes, repeats, warmup
            )
            stdout = run_or_skip(cmd, "workload", log, RUN_TIMEOUT)
        finally:
            drop_database(database_url, name)
        parsed = parse_output(stdout)
    except Exception as e:  # whatever stops the peer, the bench goes on without it
        reason = str(e) if isinstance(e, Skip) else f"{type(e).__name__}: {e}"
        log(f"dbos: skipped: {reason}")
        return {"skipped": reason}
    log_samples(parsed, log)
    return {
        "version": parsed["version"],
        "parallel_s": parsed["parallel_s"],
        "gather_s": parsed["gather_s"],
        "sequential_ms_per_step": parsed["sequential_ms_per_step"],
    }
