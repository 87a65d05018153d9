"""Test ordering: the multi-minute `long` tests go first, so that with two xdist workers the
short tests fill in around them instead of one long test running alone at the end.

Compilation cache: the entry points (`train`, `generate`) turn on jax's persistent cache, by
default in the user's ~/.cache, where a machine that ran the suite before would read what it
compiled then (so a second run is faster than CI's clean one, and the suite's time depends on
the machine's history). The suite gives them one fresh folder per run instead, removed at the
end, and turns it on in every worker from the start: the two workers and the subprocesses they
start (a resumed or repeated training run, a CLI call) read what another compiled. A set
EMOTIVETALK_COMPILE_CACHE is left alone.

The signing key that generated videos carry (`provenance.credentials`) is made in a temporary
config folder per test process, never in the user's own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from emotivetalk_jax.accelerators import CACHE_ENV, setup_compilation_cache

_OWN_CACHE = "EMOTIVETALK_TEST_OWN_CACHE"

if "EMOTIVETALK_CONFIG_DIR" not in os.environ:  # xdist workers inherit the controller's
    os.environ["EMOTIVETALK_CONFIG_DIR"] = tempfile.mkdtemp(prefix="emotivetalk-config-")
    atexit.register(shutil.rmtree, os.environ["EMOTIVETALK_CONFIG_DIR"], True)


def pytest_configure(config):
    if CACHE_ENV in os.environ and not os.environ.get(_OWN_CACHE):
        return
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) makes the folder
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="emotivetalk-test-xla-")
        os.environ[_OWN_CACHE] = "1"  # inherited by the xdist workers
    if hasattr(config, "workerinput") or config.getoption("numprocesses", None) in (None, 0):
        setup_compilation_cache()  # in the processes that run tests


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput") and os.environ.get(_OWN_CACHE):
        shutil.rmtree(os.environ.pop(CACHE_ENV), ignore_errors=True)
        os.environ.pop(_OWN_CACHE, None)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: order kept within each group
