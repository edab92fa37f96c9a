"""Django admin for stepflows: runs, events, steps, flow control, workflows; actions call
stepflows.api.

Read-only pages (nothing is added, edited or deleted here); state changes go
through the actions, each behind its own permission.
"""

from __future__ import annotations

from django.contrib import admin

from ..models import Event, FlowState, Run, Step
from .events import EventAdmin
from .flow_control import FlowStateAdmin
from .index import install
from .runs import RunAdmin
from .steps import StepAdmin

admin.site.register(Run, RunAdmin)
admin.site.register(Event, EventAdmin)
admin.site.register(Step, StepAdmin)
# The admin index's entry to the Flow control page.
admin.site.register(FlowState, FlowStateAdmin)
# The index's entry to the Workflows page (served by EventAdmin); celery results hidden.
install(admin.site)

__all__ = ["EventAdmin", "FlowStateAdmin", "RunAdmin", "StepAdmin"]
