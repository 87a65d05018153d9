"""Test ordering: the multi-minute `long` tests go first, so that with two xdist workers the
short tests fill in around them instead of one long test running alone at the end. The signing
key that generated videos carry (`provenance.credentials`) is made in a temporary config folder
per test process, never in the user's own."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "EMOTIVETALK_CONFIG_DIR" not in os.environ:  # xdist workers inherit the controller's
    os.environ["EMOTIVETALK_CONFIG_DIR"] = tempfile.mkdtemp(prefix="emotivetalk-config-")
    atexit.register(shutil.rmtree, os.environ["EMOTIVETALK_CONFIG_DIR"], True)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: order kept within each group
