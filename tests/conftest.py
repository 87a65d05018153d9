"""Test ordering: the multi-minute `long` tests (left out of the suite by `pyproject.toml`'s
`-m 'not long'`; `python -m pytest -m long` runs them) go first when a run selects them, so that
with two xdist workers the short tests fill in around them instead of one long test running
alone at the end.

Compilation cache: the entry points (`train`, `generate`) turn on jax's persistent cache, by
default in the user's ~/.cache, where a machine that ran the suite before would read what it
compiled then (so a second run is faster than CI's clean one, and the suite's time depends on
the machine's history). The suite gives them one fresh folder per run instead, shared by the
workers and the subprocesses they start (a resumed or repeated training run reads what the
first compiled), and removes it at the end. A set EMOTIVETALK_COMPILE_CACHE is left alone.

Compiler: the suite's programs are tiny and compiled once each, so compiling is most of its
time: every test process (and the subprocesses it starts, unless they set XLA_FLAGS
themselves) runs XLA's CPU backend at optimisation level 0 without LLVM's expensive passes,
what the training tests already passed as compiler options (measured: 113 -> 79 s on the
streaming, sampler and accelerator tests). Numerics are IEEE either way: the parity
tolerances are unchanged. A user's own XLA_FLAGS follow these, so theirs win.

The signing key that generated videos carry (`provenance.credentials`) is made in a temporary
config folder per test process, never in the user's own.

The web demo's tests (tests/test_web.py over HTTP, tests/test_web_browser.py in chromium) share
one tiny bundle and one app per worker (`web_bundle`, `web_app`): where its two generating tests
meet on one worker, the second reuses the model the first compiled. (`--dist loadgroup` could
put them together, but with pytest 9.2 it silently stops grouping: pytest-xdist issue 1386.)
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

_FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if _FAST_XLA not in os.environ.get("XLA_FLAGS", ""):  # before jax starts its backend; workers inherit it
    os.environ["XLA_FLAGS"] = f"{_FAST_XLA} {os.environ.get('XLA_FLAGS', '')}".strip()

from emotivetalk_jax.accelerators import CACHE_ENV  # noqa: E402  (after XLA_FLAGS)


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


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput") and os.environ.get(_OWN_CACHE):
        shutil.rmtree(os.environ.pop(CACHE_ENV), ignore_errors=True)
        os.environ.pop(_OWN_CACHE, None)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: order kept within each group


@pytest.fixture(scope="session")
def web_bundle(tmp_path_factory):
    """A tiny random pipeline bundle (16 px, one step) for the web demo's tests."""
    from emotivetalk_jax.bundle import make_random_bundle

    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", "tiny", 0, resolution=16, window=6,
                              overlap=2, steps=1, dicte_steps=1, decode_chunk=2)


@pytest.fixture(scope="session")
def web_app(web_bundle, tmp_path_factory):
    """`emotivetalk serve`'s app over `web_bundle`, uploads limited to 1 MB; no progress bars
    (a test that watches them turns them on)."""
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline
    from emotivetalk_jax.web import WebApp

    app = WebApp(EmotiveTalkPipeline.from_pretrained(web_bundle, progress=False), max_upload_mb=1,
                 temp_root=tmp_path_factory.mktemp("web"))
    yield app
    app.close()
