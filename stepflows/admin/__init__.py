"""Django admin for stepflows: runs, events and steps; actions call stepflows.api.

Read-only pages (nothing is added, edited or deleted here); state changes go
through the actions, each behind its own permission.
"""

from __future__ import annotations

from django.contrib import admin

from ..models import Event, Run, Step
from .events import EventAdmin
from .runs import RunAdmin
from .steps import StepAdmin

admin.site.register(Run, RunAdmin)
admin.site.register(Event, EventAdmin)
admin.site.register(Step, StepAdmin)

__all__ = ["EventAdmin", "RunAdmin", "StepAdmin"]
