"""The embedded broker's transport: connecting to a folder says nothing about hosts."""

from __future__ import annotations

import logging

from kombu import Connection

from project.backends import FILESYSTEM_TRANSPORT, broker_from_url


def test_a_folder_broker_connects_without_a_hostname_warning(tmp_path, caplog):
    url, options = broker_from_url(f"filesystem://{tmp_path}")
    with caplog.at_level(logging.WARNING, logger="kombu"):
        with Connection(url, transport=FILESYSTEM_TRANSPORT, transport_options=options) as conn:
            conn.connect()
            info = conn.info()
    assert info["transport"] == FILESYSTEM_TRANSPORT
    assert not [r for r in caplog.records if "hostname" in r.getMessage()]
