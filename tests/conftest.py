"""Test-wide JAX settings: 4 virtual CPU devices and float64 available.

XLA_FLAGS must be set before JAX initialises its backends, so this runs at
collection time, before any test module imports jax. With x64 enabled the
library's dtype discipline is checked too: float32 inputs must stay float32.
"""

import os

XLA_FLAGS = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("XLA_FLAGS", XLA_FLAGS)
# Heavy pmapped runs (a ResNet-18 or the T = 10 DVS VGG) on 4 virtual devices sharing 2
# cores with another xdist worker sometimes stall in an XLA:CPU all-reduce (a CI run
# aborted in it; with a longer collective timeout it hung instead). They run in a
# subprocess on one device (ONE_DEVICE_ENV); the tiny digits runs keep 4 devices.
ONE_DEVICE_ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
