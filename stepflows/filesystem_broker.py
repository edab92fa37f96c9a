"""kombu's filesystem transport, made safe for several processes.

The embedded default broker keeps each message in a file. kombu's own
transport writes a message file in place (a consumer can read it half-written
and the worker dies on a JSON error) and claims it by moving it to the
system's temp folder (not atomic across file systems, so two consumers can
both take it). This transport writes to a hidden temporary file and renames
it into place, and claims a message with one atomic rename next to the queue.

Use it with ``CELERY_BROKER_TRANSPORT = "stepflows.filesystem_broker:Transport"``
and ``broker_url = "filesystem://"``; ``project/backends.py`` does so.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from queue import Empty
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

# Remote-control messages (celery.pidbox: ping, inspect) and their replies; a
# reply is awaited for seconds, so one unread after a minute never will be.
PIDBOX_SUFFIX = ".pidbox.msg"
PIDBOX_TTL_NS = 60 * 10**9


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{uuid.uuid4()}.{queue}.msg"
        # time.monotonic_ns() keeps files in sending order when sorted by name.
        final = os.path.join(self.data_folder_out, f"{_now_ns()}_{name}")
        temp = os.path.join(self.data_folder_out, f".tmp-{name}")
        with open(temp, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(temp, final)

    def _claimed_folder(self) -> str:
        folder = (
            self.processed_folder
            if self.store_processed
            else os.path.join(self.data_folder_in, ".claimed")
        )
        os.makedirs(folder, exist_ok=True)
        return str(folder)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        wanted = f"{queue}.msg"
        claimed = self._claimed_folder()
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.startswith("."):
                continue
            target_queue = filename.partition(".")[2]
            if target_queue != wanted:
                if target_queue.endswith(PIDBOX_SUFFIX):
                    self._drop_if_stale(filename)
                continue
            target = os.path.join(claimed, filename)
            try:
                # One atomic rename: exactly one consumer wins the message.
                os.rename(os.path.join(self.data_folder_in, filename), target)
            except FileNotFoundError:
                continue
            with open(target, "rb") as f:
                payload = f.read()
            if not self.store_processed:
                os.remove(target)
            return loads(bytes_to_str(payload))
        raise Empty()

    def _drop_if_stale(self, filename: str) -> None:
        """Delete a remote-control message (a ping) nobody read for ``PIDBOX_TTL_NS``.

        A broadcast is copied into the queue of every worker that ever bound the
        fanout exchange, and a stopped worker's binding stays in the exchange
        file: its copies would pile up in the folder every consumer lists.
        """
        sent, _, _ = filename.partition("_")
        if sent.isdigit() and int(sent) < _now_ns() - PIDBOX_TTL_NS:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.data_folder_in, filename))


def _now_ns() -> int:
    import time

    return time.time_ns()


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # A folder has no host: without this, kombu logs "No hostname was
        # supplied. Reverting to default 'localhost'" for every connection.
        return {}
