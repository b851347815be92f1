"""Test-suite setup: markers that skip GPU-only and slow cases where they cannot or should not run."""

import os

# several fake CPU devices for the sharding tests; must be set before jax is imported
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
  on_gpu = jax.default_backend() in ("gpu", "cuda")
  skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (marker gpu)")
  skip_slow = pytest.mark.skip(reason="slow; pass --runslow")
  for item in items:
    if "gpu" in item.keywords and not on_gpu:
      item.add_marker(skip_gpu)
    if "slow" in item.keywords and not config.getoption("--runslow"):
      item.add_marker(skip_slow)
