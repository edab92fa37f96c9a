"""A raw Celery chord in a plain Celery app: the floor with no Django in the worker.

The bench's chord baseline runs in a Django worker and joins on
django-celery-results' database backend. This module is the same chord (N
no-op header tasks, one callback that ignores their results) in an app that
knows nothing of Django: its worker (``celery -A bench.peers.plain_celery
worker``) loads no settings, apps or database layer (kombu's JSON module alone
imports ``django.utils.functional`` when Django is installed), and the chord
joins in a result backend that does so natively (Redis).

The app is configured from the environment (``STEPFLOWS_BENCH_PLAIN_*``), which
:class:`PlainChords` sets for the worker it starts; everything else is Celery's
default. This module imports neither Django nor stepflows, so that importing
it in the worker brings in neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery, chord
from celery.result import AsyncResult

#: The repository's root: the worker runs there, so ``bench.peers`` is importable.
ROOT = Path(__file__).resolve().parent.parent.parent

ENV_BROKER = "STEPFLOWS_BENCH_PLAIN_BROKER"
ENV_TRANSPORT = "STEPFLOWS_BENCH_PLAIN_TRANSPORT"
ENV_TRANSPORT_OPTIONS = "STEPFLOWS_BENCH_PLAIN_TRANSPORT_OPTIONS"
ENV_BACKEND = "STEPFLOWS_BENCH_PLAIN_BACKEND"
ENV_QUEUE = "STEPFLOWS_BENCH_PLAIN_QUEUE"
#: The result backend's Redis: a URL, or only a db number (see result_backend_for).
ENV_RESULTS = "STEPFLOWS_BENCH_PLAIN_RESULTS"

APP_NAME = "stepflows_bench_plain"
NOOP = f"{APP_NAME}.noop"
CALLBACK = f"{APP_NAME}.callback"

#: The embedded default broker's kombu transport (project/backends.py).
FILESYSTEM_TRANSPORT = "stepflows.filesystem_broker:Transport"
#: Where the result backend goes when the broker is not Redis and nothing is configured.
DEFAULT_RESULTS = "redis://127.0.0.1:6379/15"

POLL = 0.005
TIMEOUT = 900.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


# -- the app and its two tasks ----------------------------------------------


def filesystem_transport() -> type:
    """stepflows' filesystem transport, loaded from its file alone.

    Importing ``stepflows.filesystem_broker`` runs the ``stepflows`` package's
    ``__init__``, which imports Django. The transport module itself needs only
    kombu, so loading its file under a name of its own keeps Django out of the
    worker while it uses the same transport as the bench's other workers.
    """
    name = f"{APP_NAME}_filesystem_broker"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "stepflows" / "filesystem_broker.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    transport: type = module.Transport
    return transport


def resolve_transport(path: str) -> str | type:
    """The kombu transport for ``path``: stepflows' loaded by file, any other by its path."""
    return filesystem_transport() if path == FILESYSTEM_TRANSPORT else path


def settings_from(env: Mapping[str, str]) -> dict[str, Any]:
    """Celery settings from the ``STEPFLOWS_BENCH_PLAIN_*`` variables; the rest stays default."""
    conf: dict[str, Any] = {}
    if env.get(ENV_BROKER):
        conf["broker_url"] = env[ENV_BROKER]
    if env.get(ENV_TRANSPORT):
        conf["broker_transport"] = resolve_transport(env[ENV_TRANSPORT])
    if env.get(ENV_TRANSPORT_OPTIONS):
        conf["broker_transport_options"] = json.loads(env[ENV_TRANSPORT_OPTIONS])
    if env.get(ENV_BACKEND):
        conf["result_backend"] = env[ENV_BACKEND]
    if env.get(ENV_QUEUE):
        conf["task_default_queue"] = env[ENV_QUEUE]
    return conf


def make_app(env: Mapping[str, str]) -> Celery:
    """A plain Celery app configured from ``env``.

    Never the current app: the bench process imports this module next to its
    Django project's app, whose shared tasks resolve through the current one.
    The worker makes its ``-A`` app current itself.
    """
    plain = Celery(APP_NAME, set_as_current=False)
    plain.conf.update(settings_from(env))
    return plain


app = make_app(os.environ)


@app.task(name=NOOP)
def noop() -> None:
    """A header task of the chord: does nothing, so only Celery's cost is measured."""


@app.task(name=CALLBACK)
def callback() -> None:
    """The chord's callback; it ignores the header's results, like stepflows' parallel join."""


# -- where the results go -----------------------------------------------------


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url`` within ``timeout`` seconds."""
    try:
        import redis
    except ImportError:
        return False
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def with_db(url: str, db: int) -> str:
    """``url`` (a Redis URL) with its database number replaced by ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def redis_db(url: str) -> int:
    """The database number of a Redis URL (0 when it names none)."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def result_backend_for(broker_url: str) -> str | None:
    """The Redis result backend of the plain chord for the bench's ``broker_url``.

    A Redis broker: the same server, in the db ``STEPFLOWS_BENCH_PLAIN_RESULTS``
    names, else the broker's db + 1 (so the results never mix with the queues).
    Any other broker (RabbitMQ, the embedded filesystem one):
    ``STEPFLOWS_BENCH_PLAIN_RESULTS`` (a URL, or a db number on the local Redis),
    else the local Redis's db 15 if it answers within 0.5 s. None: there is no
    Redis to join the chord, and the plain column cannot be measured.
    """
    configured = os.environ.get(ENV_RESULTS, "").strip()
    if urlsplit(broker_url).scheme in ("redis", "rediss"):
        if configured and not configured.isdigit():
            return configured
        db = int(configured) if configured else (redis_db(broker_url) + 1) % 16
        return with_db(broker_url, db)
    if configured:
        return with_db(DEFAULT_RESULTS, int(configured)) if configured.isdigit() else configured
    return DEFAULT_RESULTS if redis_answers(DEFAULT_RESULTS) else None


# -- the worker and the measurement, from the bench process ------------------


class PlainChords:
    """A plain Celery worker started for the bench, and chords timed through it.

    ``with PlainChords(...) as plain:`` starts ``celery -A bench.peers.plain_celery
    worker`` with :class:`stepflows.testing.CeleryWorker` (a process group of its
    own, ready once it answers a control ping through this app's broker);
    :meth:`time_chords` times chords as the bench times its Django ones; leaving
    the block stops the worker (SIGTERM, then SIGKILL to its group), also when the
    block ends in KeyboardInterrupt or SystemExit.
    """

    def __init__(
        self,
        broker_url: str,
        transport_options: dict[str, Any],
        result_backend: str,
        queue: str,
        concurrency: int,
        logfile: Path,
        *,
        transport: str | None = None,
    ) -> None:
        self.queue = queue
        self.concurrency = concurrency
        self.logfile = Path(logfile)
        # The embedded default's URL is ``filesystem://``: kombu's own transport of
        # that name is not safe across processes, stepflows' is.
        if transport is None and urlsplit(broker_url).scheme == "filesystem":
            transport = FILESYSTEM_TRANSPORT
        self.env = {
            ENV_BROKER: broker_url,
            ENV_TRANSPORT_OPTIONS: json.dumps(transport_options),
            ENV_BACKEND: result_backend,
            ENV_QUEUE: queue,
            **({ENV_TRANSPORT: transport} if transport else {}),
        }
        self.client = make_app(self.env)
        self.worker: Any = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The worker's main process while it runs."""
        return self.worker.process if self.worker is not None else None

    # -- start and stop --

    def __enter__(self) -> PlainChords:
        # Imported here: the worker imports this module, and must not import stepflows.
        from stepflows.testing import CeleryWorker

        self.worker = CeleryWorker(
            "bench.peers.plain_celery",
            env=self.env,
            concurrency=self.concurrency,
            queues=self.queue,
            logfile=self.logfile,
            name=APP_NAME,
            cwd=ROOT,
            ready_timeout=READY_TIMEOUT,
            control_app=self.client,
            # WARNING, Celery's default: a line per task would time the log file.
            loglevel="WARNING",
        )
        try:
            self.worker.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM the main process (it stops its pool), then SIGKILL whatever is left."""
        worker, self.worker = self.worker, None
        if worker is None:
            return
        try:
            worker.stop(timeout=STOP_TIMEOUT)
        finally:
            # Also when a second interrupt lands during the wait: no process is left.
            worker.kill()
            self.unsubscribe()
            self.client.close()

    # -- measuring --

    def publish(self, width: int) -> AsyncResult:
        """Publish one chord of ``width`` no-op tasks; the callback's result."""
        header = [
            self.client.signature(NOOP, immutable=True, queue=self.queue) for _ in range(width)
        ]
        body = self.client.signature(CALLBACK, immutable=True, queue=self.queue)
        result: AsyncResult = chord(header, app=self.client)(body)
        return result

    def time_chords(self, width: int, count: int = 1) -> float:
        """Seconds from publishing ``count`` chords of ``width`` to every callback's success."""
        start = time.perf_counter()
        callbacks = [self.publish(width) for _ in range(count)]
        self.wait(callbacks)
        elapsed = time.perf_counter() - start
        self.forget(callbacks)
        return elapsed

    def wait(self, callbacks: list[AsyncResult]) -> None:
        """Poll until every callback succeeded: one MGET per poll, as the bench's one query."""
        backend: Any = self.client.backend  # a RedisBackend: keys, MGET, decoding
        pending = {backend.get_key_for_task(r.id): r.id for r in callbacks}
        deadline = time.monotonic() + TIMEOUT
        while pending:
            keys = list(pending)
            for key, raw in zip(keys, backend.mget(keys), strict=True):
                if raw is None:
                    continue
                meta = backend.decode_result(raw)
                if meta["status"] == "SUCCESS":
                    del pending[key]
                elif meta["status"] in ("FAILURE", "REVOKED"):
                    raise RuntimeError(f"plain chord {pending[key]} ended {meta['status']}")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"bench: {len(pending)} plain chords unfinished after {TIMEOUT}s"
                )
            time.sleep(POLL)

    def forget(self, callbacks: Iterable[AsyncResult]) -> None:
        """Delete the chords' results, and drop the result subscriptions Celery opened.

        Publishing subscribes the bench process to every task's result channel,
        which the bench never reads (it polls): closing the subscriber keeps
        those unread messages from piling up in Redis across the scenarios.
        """
        backend: Any = self.client.backend
        ids: list[str] = []
        for result in callbacks:
            ids.append(result.id)
            if result.parent is not None:
                ids.extend(child.id for child in getattr(result.parent, "results", None) or [])
        keys = [backend.get_key_for_task(task_id) for task_id in ids]
        for i in range(0, len(keys), 1000):
            backend.client.delete(*keys[i : i + 1000])
        self.unsubscribe()

    def unsubscribe(self) -> None:
        """Close the result subscriber and forget its channels.

        Forgotten, they are not unsubscribed one by one later, when each result
        object is collected (at the latest while the interpreter shuts down).
        The next publish opens a new subscriber.
        """
        backend: Any = self.client.backend
        consumer = backend.result_consumer
        consumer.stop()
        consumer.subscribed_to.clear()
