"""Database and broker settings from URLs (DATABASE_URL, CELERY_BROKER_URL).

The embedded default needs no server: SQLite in WAL mode with immediate
transactions, and kombu's filesystem transport.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from stepflows.celery_config import DATABASE_RECOMMENDED, POSTGRESQL_OPTIONS


def database_from_url(url: str) -> dict[str, Any]:
    """``sqlite:///abs/path.sqlite3`` or ``postgres://user:pass@host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        name = unquote(parts.path) if parts.netloc == "" else unquote(parts.netloc + parts.path)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            "OPTIONS": {
                # Without WAL and immediate transactions, concurrent worker
                # processes fail with "database is locked".
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": str(Path(name).with_name("test-" + Path(name).name))},
            **DATABASE_RECOMMENDED,
        }
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "postgres",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": dict(POSTGRESQL_OPTIONS),
            **DATABASE_RECOMMENDED,
        }
    raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use sqlite or postgres)")


FILESYSTEM_TRANSPORT = "stepflows.filesystem_broker:Transport"


def broker_transport(url: str) -> str | None:
    """The kombu transport class for a broker URL (None: kombu picks by scheme)."""
    return FILESYSTEM_TRANSPORT if urlsplit(url).scheme == "filesystem" else None


def broker_from_url(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL Celery gets, and its transport options.

    ``filesystem:///abs/dir`` keeps messages in files under that folder, with
    stepflows' multi-process-safe filesystem transport.
    """
    parts = urlsplit(url)
    if parts.scheme == "filesystem":
        folder = Path(unquote(parts.path))
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.01,
        }
    if parts.scheme in ("redis", "rediss"):
        # Unacknowledged messages (acks_late) come back after this many seconds.
        return url, {"visibility_timeout": 3600}
    return url, {}
