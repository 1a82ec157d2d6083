"""Strict test set-up: 8 simulated CPU devices, float64 available, hypothesis at CI strength,
and a bound on each worker's memory (compiled programs are dropped between modules, and after
any test that leaves the worker above ``_RELEASE_ABOVE_MB``).

XLA_FLAGS must be set before JAX initializes its backends, so this runs before any test module
imports jax. ``INFOLOSS_RSS_LOG=path`` logs each worker's memory per module to ``path``.
"""

import ctypes
import ctypes.util
import gc
import os
import shutil
import tempfile


def _cpu_only() -> bool:
    """No accelerator plugin installed: the tests run on the CPU backend."""
    import importlib.util

    plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12", "libtpu")
    return not any(importlib.util.find_spec(name.split(".")[0]) for name in plugins)


# Most of the suite's time is XLA compiling small programs; on CPU the backend's optimization
# level 0 compiles them faster (numerics are the same ops, unfused differently).
_FAST_COMPILE = " --xla_backend_optimization_level=0" if _cpu_only() else ""
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8" + _FAST_COMPILE
).strip()
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)


# One on-disk compilation cache per test run, shared by its pytest-xdist workers: they compile
# many of the same programs, and each compiles some again after dropping its caches to bound its
# memory (below); those come back from disk. The controller makes an empty directory before the
# workers start (they inherit the variable) and removes it at the end, so the suite's time does
# not depend on earlier runs. Setting INFOLOSS_TEST_COMPILE_CACHE yourself keeps a cache across
# runs (it is then never removed).
_CACHE_VARIABLE = "INFOLOSS_TEST_COMPILE_CACHE"
_CACHE_OWNED = _CACHE_VARIABLE not in os.environ
if _CACHE_OWNED:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="infoloss-jax-tests-")


def _share_compiled_programs() -> None:
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_share_compiled_programs()

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# A worker that holds more than this after a test drops its compiled programs at once, instead
# of at the end of the module: a long module would otherwise grow past 2 GB. The largest single
# test adds about 500 MB, so a worker peaks near 1.3 GB (docs/development.md has the figures).
_RELEASE_ABOVE_MB = 800


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs_after_each_module(request):
    """Frees the programs a test module compiled once it is done.

    JAX keeps every compiled executable (jit caches, and the library's eager-call and on-mesh
    caches, which hold jitted functions) for the life of the process, so a pytest-xdist worker
    would otherwise grow by every program of every module it runs.
    """
    yield
    _log_memory(request.module.__name__)
    _release_memory()


@pytest.fixture(autouse=True)
def _drop_compiled_programs_when_memory_is_high(request):
    """Frees the compiled programs after a test that leaves the worker above the bound."""
    yield
    resident = _resident_mb()
    if resident > _RELEASE_ABOVE_MB:
        _log_memory(request.node.nodeid)
        _release_memory()


def _release_memory() -> None:
    """Drops JAX's compiled programs and hands the freed heap back to the system.

    glibc keeps freed memory in its arenas, so resident memory would not shrink without
    ``malloc_trim``; where there is no glibc, the programs are still dropped.
    """
    jax.clear_caches()
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (AttributeError, OSError, TypeError):
        pass


def _resident_mb(field: str = "VmRSS") -> int:
    """This process's resident memory (or with ``field="VmHWM"``, its peak) in MB; 0 if the
    system has no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _log_memory(where: str) -> None:
    """With INFOLOSS_RSS_LOG=path, appends the worker's resident and peak memory to path."""
    path = os.environ.get("INFOLOSS_RSS_LOG")
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(path, "a") as log:
            log.write(f"{worker} {where} rss={_resident_mb()} peak={_resident_mb('VmHWM')}\n")


# The fast selection (-m "not slow") runs this many cases of each parametrized test, in the
# order they are declared; the slow selection runs the rest, so the two together run every case.
FAST_CASES_PER_TEST = 1


def pytest_collection_modifyitems(config, items):
    """Marks the cases of a parametrized test beyond its first FAST_CASES_PER_TEST as slow."""
    del config
    seen: dict[tuple, int] = {}
    for item in items:
        if item.get_closest_marker("slow") is not None or not hasattr(item, "callspec"):
            continue
        key = (item.path, item.cls, item.originalname)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > FAST_CASES_PER_TEST:
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    """The process that made the run's compilation cache removes it."""
    if _CACHE_OWNED and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ[_CACHE_VARIABLE], ignore_errors=True)
