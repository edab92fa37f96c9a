"""Test workflows, one module per topic; importing them registers them."""

from .flows import (
    admin_views,
    audit,
    basics,
    core,
    engine_units,
    fanout,
    faults,
    flow,
    flow_in_process,
    in_process,
    interventions,
    leases,
    live,
    waits,
    waits_in_process,
    workflows_page,
)

__all__ = [
    "admin_views",
    "audit",
    "basics",
    "core",
    "engine_units",
    "fanout",
    "faults",
    "flow",
    "flow_in_process",
    "in_process",
    "interventions",
    "leases",
    "live",
    "waits",
    "waits_in_process",
    "workflows_page",
]
