"""Target platforms, for the modules whose fastest exact formulation depends on the chip they will run on.

A program can be lowered on one platform for another (ahead-of-time compilation on a CPU host for a TPU slice),
so the formulation follows an explicit `platform` argument, never the backend of the process that traces it.
Trainers resolve it once from the mesh's devices (`of_devices`) and record it with the run's config.
"""
from __future__ import annotations

from typing import Iterable

import jax

PLATFORMS = ("cpu", "gpu", "tpu")


def check(platform: str, what: str = "platform") -> str:
  """Returns `platform` if it is one of `PLATFORMS`, else raises one clear ValueError naming `what`."""
  if platform not in PLATFORMS:
    raise ValueError(f"{what} must be one of {PLATFORMS}, got {platform!r}")
  return platform


def of_devices(devices: Iterable[jax.Device]) -> str:
  """The platform of `devices` (e.g. `mesh.devices.flat`); a mix of platforms is an error."""
  found = sorted({d.platform for d in devices})
  if len(found) != 1:
    raise ValueError(f"expected devices of one platform, got {found or 'no devices'}")
  return check(found[0], "device platform")
