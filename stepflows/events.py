"""The event that triggers workflows, as sent and as seen inside a run."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field

# \A and \Z, not ^ and $: "$" also matches before a trailing newline.
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:/\-]*\Z")


class Event(BaseModel):
    """An event: a name, a JSON object of data, an optional id, a timestamp.

    ``id`` is an idempotency key: an event whose id was already received starts
    nothing new. Inside a run whose workflow declares ``schema=``, ``data`` is an
    instance of that model.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    data: Any = Field(default_factory=dict)
    id: str | None = None
    ts: datetime = Field(default_factory=timezone.now)
