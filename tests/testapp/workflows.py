"""Test workflows, one module per topic; importing them registers them."""

from .flows import admin_views, basics, fanout

__all__ = ["admin_views", "basics", "fanout"]
