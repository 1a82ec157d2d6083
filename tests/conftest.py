"""Strict test set-up: 8 simulated CPU devices, float64 available, hypothesis at CI strength.

XLA_FLAGS must be set before JAX initializes its backends, so this runs before any test module
imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs_after_each_module():
    """Frees the programs a test module compiled once it is done.

    JAX keeps every compiled executable (jit caches, and the library's eager-call and on-mesh
    caches, which hold jitted functions) for the life of the process, so a pytest-xdist worker
    would otherwise grow by every program of every module it runs.
    """
    yield
    jax.clear_caches()
