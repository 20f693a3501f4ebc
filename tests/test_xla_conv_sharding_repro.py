"""The standalone reproduction of XLA's SPMD gradient fault still reproduces (see docs/xla_conv_sharding_repro.py).

`sharding.LOGICAL_AXIS_RULES` works around the fault (convolution kernels never split their input channels);
when a jax upgrade fixes it, this test fails and says so.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "xla_conv_sharding_repro.py"


def test_reproduction_shows_the_fault():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert "CONTROL FAILED" not in lines, out.stdout
  assert "FAULT ABSENT" not in lines, (
      "the fault is fixed in this jax: the workaround in sharding.py can be reconsidered\n" + out.stdout)
  assert "FAULT PRESENT" in lines, out.stdout
