"""Lease tokens, the signal of a lost lease, and publishing after commit."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

from django.db import connection, transaction

from .. import dispatch


class LeaseLost(BaseException):
    """This worker no longer holds the run (or the parallel step) it was executing.

    Another worker took it over after the lease expired (this one was paused,
    or cut off from the database), or staff cancelled the run. Every write of
    the store is fenced by the lease token, so nothing this worker does from
    now on is recorded; the invocation stops. A BaseException, so that a
    workflow's ``except Exception`` cannot swallow it.
    """

    def __init__(self, what: str, *, cancelled: bool = False) -> None:
        super().__init__(what)
        self.what = what
        self.cancelled = cancelled


def worker_name() -> str:
    """host:pid of this process, recorded on each attempt."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_token() -> str:
    """A lease token: this process, plus a random part unique to one invocation."""
    return f"{worker_name()}:{os.urandom(4).hex()}"


def worker_of(token: str) -> str:
    """The host:pid part of a lease token (what admin and the command line show)."""
    return token.rsplit(":", 1)[0] if token.count(":") >= 2 else token


def after_commit(messages: Iterable[dispatch.Message]) -> None:
    """Publish the messages once the current transaction commits (at once outside one)."""
    batch = list(messages)
    if batch:
        transaction.on_commit(lambda: dispatch.publish(batch), robust=True)


def hold_name(namespace: int, name: str) -> None:
    """Hold ``name`` exclusively until the transaction ends (PostgreSQL: an advisory lock).

    On SQLite there is nothing to take: the project's immediate transactions
    already run one writer at a time.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [namespace, name])
