"""Test-wide JAX settings: 4 virtual CPU devices and float64 available.

XLA_FLAGS must be set before JAX initialises its backends, so this runs at
collection time, before any test module imports jax. With x64 enabled the
library's dtype discipline is checked too: float32 inputs must stay float32.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
