"""Test workflows, one module per topic; importing them registers them."""

from .flows import (
    admin_views,  # noqa: F401
    basics,  # noqa: F401
)
