"""kombu's filesystem transport, made safe for several processes, with a folder per queue.

The embedded default broker keeps each message in a file. kombu's own
transport writes a message file in place (a consumer can read it half-written
and the worker dies on a JSON error) and claims it by moving it to the
system's temp folder (not atomic across file systems, so two consumers can
both take it). This transport writes to a hidden temporary file and renames
it into place, and claims a message with one atomic rename next to the queue.

kombu's transport keeps every queue's messages in one folder, and lists and
sorts that whole folder for every message it takes: a consumer of an empty
queue lists every other queue's messages at each poll, and taking the
messages of a group of N steps costs O(N^2). This one keeps each queue's
messages in a folder of its own (:func:`queue_folder`), and keeps the names
from one listing, taking them in order until none is left before it lists
again. A name another consumer took meanwhile is skipped (its rename fails).
Messages an earlier version left in the shared folder are still taken.

The folders are polled. kombu sleeps its ``polling_interval`` whenever no
message could be taken, also when messages are waiting but every pool
process holds one already (the prefetch limit): a process that finishes a
step then waits up to that interval for the next. This one polls every
``busy_polling_interval`` instead while its last listing left messages
untaken. When its queues are empty, a consumer waits for a doorbell: each
task queue's folder has a named pipe (``.bell``) that the consumer holds
open, and a sender writes a byte to it after putting a message, so the
consumer lists the folder again at once instead of up to
``polling_interval`` later (each hop of a run, on the embedded default,
waited half of that on average). ``polling_interval`` stays the longest
wait: a ring can be missed (a sender that finds no one listening) but a
message cannot. Where there are no named pipes (Windows), or for
remote-control queues, consumers only poll.

Use it with ``CELERY_BROKER_TRANSPORT = "stepflows.filesystem_broker:Transport"``
and ``broker_url = "filesystem://"``; ``project/backends.py`` does so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
import uuid
from collections import deque
from queue import Empty
from time import monotonic, sleep
from typing import Any
from urllib.parse import quote

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

# Remote-control messages (celery.pidbox: ping, inspect) and their replies; a
# reply is awaited for seconds, so one unread after a minute never will be.
PIDBOX_SUFFIX = ".pidbox"
PIDBOX_TTL_NS = 60 * 10**9
#: Seconds between two sweeps of stale remote-control messages by one consumer.
SWEEP_SECONDS = 60.0
#: The named pipe in a task queue's folder that wakes its consumers (see the module).
BELL = ".bell"


def queue_folder(data_folder: str | os.PathLike[str], queue: str) -> str:
    """The folder that holds ``queue``'s message files, under the broker's data folder.

    The queue's name, with ``/`` (and a leading dot) escaped: ``stepflows``,
    ``celery@host.celery.pidbox``. Each message file is named
    ``<time sent, ns>_<uuid>.<queue>.msg``, so the names sort in sending order.
    """
    name = quote(queue, safe="@+=,;~ ")
    if name.startswith("."):
        name = "%2E" + name[1:]
    return os.path.join(data_folder, name)


def message_files(data_folder: str | os.PathLike[str], queue: str) -> list[str]:
    """Paths of the message files ``queue`` holds now, oldest first (for tests and tools)."""
    folder = queue_folder(data_folder, queue)
    with contextlib.suppress(FileNotFoundError):
        return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if _is_message(n)]
    return []


def _is_message(filename: str) -> bool:
    return filename.endswith(".msg") and not filename.startswith(".")


class Channel(filesystem.Channel):
    _claimed: str | None = None
    #: Queue folders known to exist (created by this channel or found).
    _folders: set[str] | None = None
    #: Per queue, the paths of its messages from the last listing not yet tried, oldest first.
    _listed: dict[str, deque[tuple[str, str]]] | None = None
    #: Per queue, when this channel last looked for an earlier version's files of it.
    _looked: dict[str, float] | None = None
    _swept: float = 0.0
    #: Per queue folder, this consumer's end of its bell (None: the queue has none).
    _bells: dict[str, int | None] | None = None

    def _folder(self, data_folder: str, queue: str) -> str:
        folder = queue_folder(data_folder, queue)
        if self._folders is None:
            self._folders = set()
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        return folder

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        folder = self._folder(self.data_folder_out, queue)
        name = f"{uuid.uuid4()}.{queue}.msg"
        # The time sent first keeps files in sending order when sorted by name.
        final = os.path.join(folder, f"{time.time_ns()}_{name}")
        temp = os.path.join(folder, f".tmp-{name}")
        try:
            f = open(temp, "wb")
        except FileNotFoundError:
            # A sweep removed the folder of a remote-control queue idle for a minute.
            os.makedirs(folder, exist_ok=True)
            f = open(temp, "wb")
        with f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(temp, final)
        _ring(folder)

    def bell(self, queue: str) -> int | None:
        """This consumer's end of ``queue``'s bell, made and opened at its first wait."""
        folder = self._folder(self.data_folder_in, queue)
        if self._bells is None:
            self._bells = {}
        if folder not in self._bells:
            self._bells[folder] = _open_bell(folder, queue)
        return self._bells[folder]

    def close(self) -> None:
        for fd in (self._bells or {}).values():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._bells = None
        super().close()

    def _claimed_folder(self) -> str:
        if self._claimed is None:
            folder = (
                self.processed_folder
                if self.store_processed
                else os.path.join(self.data_folder_in, ".claimed")
            )
            os.makedirs(folder, exist_ok=True)
            self._claimed = str(folder)
        return self._claimed

    def _list(self, queue: str) -> deque[tuple[str, str]]:
        """The queue's message files as (sort key, path), oldest first.

        Its own folder; and, at the first listing and then once a minute, the
        shared folder's files of this queue that an earlier version of this
        transport wrote there.
        """
        folder = self._folder(self.data_folder_in, queue)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:  # a remote-control queue's folder, swept while idle
            assert self._folders is not None
            self._folders.discard(folder)
            names = []
        found = [(n, os.path.join(folder, n)) for n in names if _is_message(n)]
        now = monotonic()
        if self._looked is None:
            self._looked = {}
        if now - self._looked.get(queue, -SWEEP_SECONDS) >= SWEEP_SECONDS:
            self._looked[queue] = now
            wanted = f"{queue}.msg"
            for entry in os.scandir(self.data_folder_in):
                # <time>_<uuid>.<queue>.msg: the queue's name is all after the first dot.
                if entry.name.partition(".")[2] == wanted and not entry.name.startswith("."):
                    found.append((entry.name, entry.path))
        if now - self._swept > SWEEP_SECONDS:
            self._swept = now
            self._sweep_remote_control()
        found.sort()
        return deque(found)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        if self._listed is None:
            self._listed = {}
        listed = self._listed.get(queue)
        if not listed:
            listed = self._listed[queue] = self._list(queue)
        claimed = self._claimed_folder()
        while listed:
            filename, path = listed.popleft()
            target = os.path.join(claimed, filename)
            try:
                # One atomic rename: exactly one consumer wins the message.
                os.rename(path, target)
            except FileNotFoundError:
                continue
            with open(target, "rb") as f:
                payload = f.read()
            if not self.store_processed:
                os.remove(target)
            return loads(bytes_to_str(payload))
        raise Empty()

    def _size(self, queue: str) -> int:
        # With an earlier version's files in the shared folder, which _get also takes.
        return len(message_files(self.data_folder_in, queue)) + super()._size(queue)

    def _purge(self, queue: str) -> int:
        count = 0
        for path in message_files(self.data_folder_in, queue):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                count += 1
        return count + super()._purge(queue)  # an earlier version's files, if any

    def _sweep_remote_control(self) -> None:
        """Delete remote-control messages (pings) nobody read for ``PIDBOX_TTL_NS``.

        A broadcast is copied into the queue of every worker that ever bound the
        fanout exchange, and a stopped worker's binding stays in the exchange
        file: its copies would pile up in a folder nobody reads. Every
        ``celery inspect`` makes a reply queue, read for seconds: the folder
        of a remote-control queue left empty for as long goes too (a later
        message makes it again).
        """
        oldest = time.time_ns() - PIDBOX_TTL_NS
        for entry in os.scandir(self.data_folder_in):
            if entry.name.endswith(PIDBOX_SUFFIX) and entry.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    for name in os.listdir(entry.path):
                        if _is_message(name) and _sent_before(name, oldest):
                            with contextlib.suppress(FileNotFoundError):
                                os.remove(os.path.join(entry.path, name))
                    if entry.stat().st_mtime_ns < oldest:
                        with contextlib.suppress(OSError):  # not empty: in use again
                            os.rmdir(entry.path)
            elif entry.name.endswith(PIDBOX_SUFFIX + ".msg") and _sent_before(entry.name, oldest):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)


def _open_bell(folder: str, queue: str) -> int | None:
    """Make the folder's bell if needed and open it for reading (None: no bell here).

    Opened for writing too, so the pipe always has a writer: without one, a
    reader of a named pipe sees end-of-file, and select() wakes at once, as
    soon as the first sender has closed it.
    """
    if queue.endswith(PIDBOX_SUFFIX) or not hasattr(os, "mkfifo"):
        return None  # remote-control folders are swept when idle; Windows has no named pipes
    path = os.path.join(folder, BELL)
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    except OSError:  # a file system without named pipes
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None


def _ring(folder: str) -> None:
    """Wake the consumers waiting on the folder's bell, if it has one and they listen."""
    try:
        fd = os.open(os.path.join(folder, BELL), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no bell (FileNotFoundError), or no consumer holds it open (ENXIO)
        return
    try:
        os.write(fd, b"\0")
    except OSError as exc:  # full: the consumers have wake-ups enough to read
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise
    finally:
        os.close(fd)


def _silence(fd: int) -> None:
    """Read the rings out of a bell, so the next wait waits for a new one."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _sent_before(filename: str, oldest_ns: int) -> bool:
    sent, _, _ = filename.partition("_")
    return sent.isdigit() and int(sent) < oldest_ns


class Transport(filesystem.Transport):
    Channel = Channel

    #: Seconds between polls while listed messages wait for a free pool process.
    busy_polling_interval = 0.001

    # (kombu's stubs type this method two ways, in its base and its virtual transport.)
    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """kombu's loop, but polling every ``busy_polling_interval`` while messages wait."""
        start = monotonic()
        assert self.cycle is not None
        get = self.cycle.get
        while True:
            try:
                get(self._deliver, timeout=timeout)
            except Empty:
                if timeout is not None and monotonic() - start >= timeout:
                    raise TimeoutError() from None  # socket.timeout, as kombu raises
                waiting = self._waiting()
                interval = self.busy_polling_interval if waiting else self.polling_interval
                if interval is None:
                    continue
                wait = min(interval, timeout) if timeout else interval
                bells = [] if waiting else self._bells()
                if bells:
                    ready, _, _ = select.select(bells, [], [], wait)
                    for fd in ready:
                        _silence(fd)
                else:
                    sleep(wait)
            else:
                return

    def _bells(self) -> list[int]:
        """The bells of the queues this connection's channels consume."""
        found = []
        for ch in self.channels or ():
            if isinstance(ch, Channel):
                for queue in ch._active_queues:
                    fd = ch.bell(queue)
                    if fd is not None:
                        found.append(fd)
        return found

    def _waiting(self) -> bool:
        """A channel's last listing left messages it has not taken yet."""
        return any(
            isinstance(ch, Channel) and ch._listed and any(ch._listed.values())
            for ch in self.channels or ()
        )

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # A folder has no host: without this, kombu logs "No hostname was
        # supplied. Reverting to default 'localhost'" for every connection.
        return {}
