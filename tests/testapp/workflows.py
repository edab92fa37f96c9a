"""Test workflows, one module per topic; importing them registers them."""

from .flows import (
    admin_views,
    audit,
    basics,
    core,
    engine_units,
    fanout,
    flow_in_process,
    faults,
    in_process,
    leases,
    waits,
    waits_in_process,
)

__all__ = [
    "admin_views",
    "audit",
    "basics",
    "core",
    "engine_units",
    "fanout",
    "flow_in_process",
    "faults",
    "in_process",
    "leases",
    "waits",
    "waits_in_process",
]
