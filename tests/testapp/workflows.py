"""Test workflows, one module per topic; importing them registers them."""

from .flows import admin_views, basics, fanout, faults

__all__ = ["admin_views", "basics", "fanout", "faults"]
