"""Test ordering: the multi-minute `long` tests go first, so that with two xdist workers the
short tests fill in around them instead of one long test running alone at the end. The signing
key that generated videos carry (`provenance.credentials`) is made in a temporary config folder
per test process, never in the user's own."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("EMOTIVETALK_CONFIG_DIR", tempfile.mkdtemp(prefix="emotivetalk-config-"))


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: order kept within each group
