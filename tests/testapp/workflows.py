"""Test workflows, one module per topic; importing them registers them."""

from .flows import (
    basics,  # noqa: F401
    faults,  # noqa: F401
)
