"""Test-wide JAX settings: 4 virtual CPU devices and float64 available.

XLA_FLAGS must be set before JAX initialises its backends, so this runs at
collection time, before any test module imports jax. With x64 enabled the
library's dtype discipline is checked too: float32 inputs must stay float32.
"""

import os

# 4 virtual devices share 2 cores with another xdist worker: a device can wait long for
# its peers in a cross-device mean, and XLA:CPU aborts a collective that stays stuck
# past its default timeout (a CI run died so), so the limit is raised to 10 minutes.
XLA_FLAGS = ("--xla_force_host_platform_device_count=4 --xla_cpu_collective_timeout_seconds=600 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
os.environ.setdefault("XLA_FLAGS", XLA_FLAGS)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
