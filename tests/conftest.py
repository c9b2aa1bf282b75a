"""Test-wide JAX settings: 4 virtual CPU devices and float64 available.

XLA_FLAGS must be set before JAX initialises its backends, so this runs at
collection time, before any test module imports jax. With x64 enabled the
library's dtype discipline is checked too: float32 inputs must stay float32.
"""

import contextlib
import os
import tempfile

XLA_FLAGS = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("XLA_FLAGS", XLA_FLAGS)
# Heavy pmapped runs (a ResNet-18 or the T = 10 DVS VGG) on 4 virtual devices sharing 2
# cores with another xdist worker sometimes stall in an XLA:CPU all-reduce (a CI run
# aborted in it; with a longer collective timeout it hung instead). They run in a
# subprocess on one device (ONE_DEVICE_ENV); the tiny digits runs keep 4 devices.
ONE_DEVICE_ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for the session's processes (xdist workers and the
# CLI subprocesses, which compile the same digits steps again and again).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"ratebp_jax_tests_{os.getuid()}", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


@contextlib.contextmanager
def prepared_mock_data(data_dir, *names: str, num_examples: int):
    """``tfds.testing.mock_data`` serving num_examples fake examples, with the datasets ``names``
    looking prepared: mock_data points every builder at ``data_dir``, where their version
    folders (what the data package checks for a prepared dataset) are made here."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=num_examples, data_dir=str(data_dir)):
        for name in names:
            os.makedirs(tfds.builder(name).data_dir, exist_ok=True)
        yield
