"""The embedded broker's transport: no hostname warning; messages in order, listed per batch."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

from project.backends import FILESYSTEM_TRANSPORT, broker_from_url
from stepflows import filesystem_broker


@pytest.fixture
def channel(tmp_path) -> Iterator[filesystem_broker.Channel]:
    url, options = broker_from_url(f"filesystem://{tmp_path}")
    with Connection(url, transport=FILESYSTEM_TRANSPORT, transport_options=options) as conn:
        yield conn.default_channel


@pytest.fixture
def listings(monkeypatch) -> list[str]:
    """The folders the broker lists, one entry per ``os.listdir``."""
    seen: list[str] = []
    real = os.listdir

    def listdir(path: str) -> list[str]:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(filesystem_broker.os, "listdir", listdir)
    return seen


def test_a_folder_broker_connects_without_a_hostname_warning(tmp_path, caplog):
    url, options = broker_from_url(f"filesystem://{tmp_path}")
    with caplog.at_level(logging.WARNING, logger="kombu"):
        with Connection(url, transport=FILESYSTEM_TRANSPORT, transport_options=options) as conn:
            conn.connect()
            info = conn.info()
    assert info["transport"] == FILESYSTEM_TRANSPORT
    assert not [r for r in caplog.records if "hostname" in r.getMessage()]


def test_messages_come_out_in_sending_order_from_one_listing(channel, listings) -> None:
    for i in range(50):
        channel._put("q", {"i": i})
    channel._put("other", {"i": -1})

    got = [channel._get("q")["i"] for _ in range(50)]

    assert got == list(range(50))
    assert len(listings) == 1  # kombu's own transport lists the folder for each message
    with pytest.raises(Empty):
        channel._get("q")
    assert channel._get("other") == {"i": -1}


def test_a_message_sent_after_the_listing_is_taken_after_the_listed_ones(channel) -> None:
    channel._put("q", {"i": 0})
    channel._put("q", {"i": 1})
    assert channel._get("q") == {"i": 0}

    channel._put("q", {"i": 2})

    assert [channel._get("q")["i"] for _ in range(2)] == [1, 2]
    with pytest.raises(Empty):
        channel._get("q")


def test_a_listed_message_another_consumer_took_is_skipped(channel, tmp_path) -> None:
    for i in range(3):
        channel._put("q", {"i": i})
    assert channel._get("q") == {"i": 0}
    # Another consumer claims the next message after this one listed the folder.
    os.remove(filesystem_broker.message_files(tmp_path / "queue", "q")[0])

    assert channel._get("q") == {"i": 2}
    with pytest.raises(Empty):
        channel._get("q")


def test_the_transport_polls_fast_only_while_listed_messages_wait(channel) -> None:
    transport = channel.connection
    channel._put("q", {"i": 0})
    channel._put("q", {"i": 1})
    assert not transport._waiting()  # nothing listed yet: the usual polling interval

    channel._get("q")
    assert transport._waiting()  # the listing left a message: poll again soon

    channel._get("q")
    assert not transport._waiting()
    assert transport.busy_polling_interval < transport.polling_interval


def test_each_queue_has_a_folder_and_an_empty_queue_lists_only_its_own(channel, tmp_path) -> None:
    for i in range(20):
        channel._put("busy", {"i": i})
    channel._put("celery@host.celery.pidbox", {"ping": 1})
    folder = tmp_path / "queue"

    assert len(filesystem_broker.message_files(folder, "busy")) == 20
    assert os.path.isdir(filesystem_broker.queue_folder(folder, "celery@host.celery.pidbox"))
    assert channel._size("busy") == 20
    with pytest.raises(Empty):
        channel._get("idle")  # its folder is empty: the busy queue's files are not read
    assert channel._get("celery@host.celery.pidbox") == {"ping": 1}
    assert channel._purge("busy") == 20
    assert channel._size("busy") == 0


def test_queue_folders_are_plain_names_inside_the_data_folder(tmp_path) -> None:
    assert filesystem_broker.queue_folder(tmp_path, "stepflows") == str(tmp_path / "stepflows")
    for name in ("a/b", "..", ".hidden", "../up"):
        folder = filesystem_broker.queue_folder(tmp_path, name)
        assert os.path.dirname(folder) == str(tmp_path)
        assert not os.path.basename(folder).startswith(".")


def test_messages_an_earlier_version_left_in_the_shared_folder_are_taken(channel, tmp_path) -> None:
    folder = tmp_path / "queue"
    (folder / f"{time.time_ns() - 10**9}_{uuid.uuid4()}.q.msg").write_text('{"i": 0}')
    (folder / f"{time.time_ns() - 10**9}_{uuid.uuid4()}.other.q.msg").write_text('{"i": -1}')
    channel._put("q", {"i": 1})

    assert channel._size("q") == 2
    assert [channel._get("q")["i"] for _ in range(2)] == [0, 1]
    with pytest.raises(Empty):
        channel._get("q")


def test_idle_remote_control_folders_are_swept_and_made_again_when_used(channel, tmp_path) -> None:
    folder = tmp_path / "queue"
    reply = Path(filesystem_broker.queue_folder(folder, "f00.reply.celery.pidbox"))
    tasks = Path(filesystem_broker.queue_folder(folder, "idle-tasks"))
    reply.mkdir()
    tasks.mkdir()
    old = (time.time_ns() - filesystem_broker.PIDBOX_TTL_NS) / 1e9 - 10
    for path in (reply, tasks):
        os.utime(path, (old, old))

    with pytest.raises(Empty):
        channel._get("q")  # the first listing sweeps

    assert not reply.exists()  # an empty reply queue nobody read for a minute
    assert tasks.exists()  # a task queue's folder is never swept
    channel._folders.add(str(reply))  # as if this channel had written there before
    channel._put("f00.reply.celery.pidbox", {"pong": 1})
    assert channel._get("f00.reply.celery.pidbox") == {"pong": 1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes: consumers only poll")
def test_a_waiting_consumer_is_woken_by_a_message_not_by_its_polling_interval(tmp_path) -> None:
    import threading

    url, options = broker_from_url(f"filesystem://{tmp_path}")
    # An hour between polls: only the bell can bring the message in time.
    options = {**options, "polling_interval": 3600}
    got: list[object] = []
    with (
        Connection(url, transport=FILESYSTEM_TRANSPORT, transport_options=options) as consumer,
        Connection(url, transport=FILESYSTEM_TRANSPORT, transport_options=options) as sender,
    ):
        inbox = consumer.SimpleQueue("q")
        outbox = sender.SimpleQueue("q")
        waiting = threading.Thread(target=lambda: got.append(inbox.get(block=True).payload))
        waiting.daemon = True
        waiting.start()
        folder = Path(filesystem_broker.queue_folder(options["data_folder_in"], "q"))
        for _ in range(600):  # the consumer makes its bell when it starts to wait
            if (folder / filesystem_broker.BELL).exists():
                break
            time.sleep(0.05)
        outbox.put({"i": 1})
        waiting.join(timeout=120)
        assert not waiting.is_alive(), "the consumer slept through the message"
        assert got == [{"i": 1}]
        assert filesystem_broker.message_files(options["data_folder_in"], "q") == []
        inbox.close()
        outbox.close()


def test_a_bell_without_a_listener_loses_nothing(channel, tmp_path) -> None:
    # A task queue's bell is made by its consumer's first wait; a pidbox queue has none.
    assert channel.bell("celery@host.celery.pidbox") is None
    if hasattr(os, "mkfifo"):
        fd = channel.bell("q")
        assert fd is not None
        assert channel.bell("q") == fd  # opened once per channel
    channel._put("q", {"i": 0})  # rings; with no listener (or no bell), the send still works
    other = tmp_path / "no-bell"
    other.mkdir()
    filesystem_broker._ring(str(other))
    assert channel._get("q") == {"i": 0}
    assert filesystem_broker.message_files(channel.data_folder_in, "q") == []  # not the bell
