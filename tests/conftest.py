"""Test-wide setup: 8 simulated CPU devices (set before JAX initialises) and the reference fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir():
  return fixtures.fixtures_dir()
