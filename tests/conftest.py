"""Test ordering: the multi-minute `long` tests go first, so that with two xdist workers the
short tests fill in around them instead of one long test running alone at the end."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: order kept within each group
