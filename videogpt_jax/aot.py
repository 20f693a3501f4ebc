"""Ahead-of-time compilation for TPU slices from a host without a TPU: per-chip HBM, flops, bytes, roofline.

`libtpu` (the `tpu` extra: `pip install -e '.[tpu]'`) describes a TPU topology such as `v5e:2x4` as
compile-only devices; a `jax.jit` step lowered with abstract arguments sharded over a mesh of them is compiled by
the real TPU compiler. Its memory analysis is per chip (the program is SPMD), its cost analysis counts the flops
and HBM bytes of one chip's program. Only one process at a time can hold libtpu (it takes a lock file), so run
TPU compiles one after another, and keep other JAX processes on `JAX_PLATFORMS=cpu`.

The roofline step is `max(flops / peak, bytes / HBM bandwidth)` on one chip; the ceiling is the compute time over
that step (1.0 = compute bound). It ignores inter-chip communication and overlap, so it bounds the step from
below and the utilisation from above.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import time
from typing import Any, Callable, Sequence

import jax

INSTALL_HINT = "pip install -e '.[tpu]'"
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip: published bf16 peak and HBM bandwidth; `usable_hbm_bytes` is the compiler's own limit (the
  "available HBM" of its out-of-memory verdict, measured with libtpu 0.0.42), a little under the nominal size."""
  name: str
  peak_flops: float
  hbm_bytes_per_s: float
  hbm_bytes: int
  usable_hbm_bytes: int


# Keyed by `device.device_kind`.
CHIPS: dict[str, Chip] = {
    "TPU v4": Chip("v4", 275e12, 1.2e12, 32 * GiB, int(30.75 * GiB)),
    "TPU v5 lite": Chip("v5e", 197e12, 819e9, 16 * GiB, int(15.75 * GiB)),
    "TPU v5": Chip("v5p", 459e12, 2.765e12, 95 * GiB, int(95 * GiB)),  # usable limit not measured: nominal
    "TPU v6 lite": Chip("v6e", 918e12, 1.64e12, 32 * GiB, int(31.25 * GiB)),
}
# v4 and v5p chips have two TensorCores run as one device ("megacore"), which `jax.make_mesh` requires.
_MEGACORE = ("v4", "v5p")


class TpuUnavailableError(RuntimeError):
  """libtpu is not installed (the message says how to install it)."""


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> list[jax.Device]:
  """The compile-only devices (one per chip) of a TPU topology such as `v5e:2x4` or `v4:2x2x1`.

  Raises:
    TpuUnavailableError: libtpu is not installed.
    ValueError: libtpu does not know the topology name.
  """
  if not libtpu_available():
    raise TpuUnavailableError(f"compiling for TPU needs libtpu, which is not installed: {INSTALL_HINT}")
  # A deferred import: jax.experimental.topologies is only needed here, and only with libtpu present.
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  kwargs = {"chip_config_name": "megacore"} if topology.split(":")[0] in _MEGACORE else {}
  try:
    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices)
  except jax.errors.JaxRuntimeError as e:
    first = str(e).strip().splitlines()[0]
    if "ABORTED" in first or "lock" in first.lower():
      raise RuntimeError(f"libtpu is held by another process (one at a time): {first}") from e
    raise ValueError(f"--topology={topology!r}: {first}") from e


def chip_of(devices: Sequence[jax.Device]) -> Chip:
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f"no published figures for device kind {kind!r}; known: {sorted(CHIPS)}")
  return CHIPS[kind]


@dataclasses.dataclass
class Report:
  """What the TPU compiler says about one step on one chip. `fits` is False when it refused to compile for lack
  of HBM (`error` holds its verdict, and only the figures it states are set)."""
  chip: Chip
  num_chips: int
  fits: bool
  compile_s: float
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  compiler_optimal_s: float | None = None
  error: str = ""
  required_bytes: int | None = None  # from an out-of-memory verdict
  mesh: dict[str, int] | None = None
  program: str = "train_step"  # or "sample": a prior's KV-cached sampler
  kv_cache_bytes: int | None = None  # the sampler's KV caches per chip
  tokens: int | None = None  # the sampler's decode steps (positions per sample)
  cost_note: str = ""  # where flops and bytes come from, when not the compiler's count of this program
  loop_flops: float | None = None  # the compiler's count of a program whose layer loop it counted once
  loop_bytes_accessed: float | None = None
  kernel_flops: float = 0.0  # Pallas kernels' flops, which the compiler's count leaves out (analytic)
  block_probes: dict[str, dict[str, float]] | None = None  # {"1": {flops, bytes_accessed}, "2": ...}: see cost_note

  @property
  def hbm_bytes(self) -> int:
    """Per-chip HBM the step holds: arguments + outputs (less those aliased to donated arguments) + temporaries
    + the program."""
    if not self.fits:
      return self.required_bytes or 0
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

  @property
  def headroom(self) -> float:
    return 1.0 - self.hbm_bytes / self.chip.usable_hbm_bytes

  @property
  def total_flops(self) -> float:
    """The compiler's flops plus the Pallas kernels' (`kernel_flops`)."""
    return self.flops + self.kernel_flops

  @property
  def compute_s(self) -> float:
    return self.total_flops / self.chip.peak_flops

  @property
  def memory_s(self) -> float:
    return self.bytes_accessed / self.chip.hbm_bytes_per_s

  @property
  def roofline_s(self) -> float:
    return max(self.compute_s, self.memory_s)

  @property
  def ceiling(self) -> float:
    return self.compute_s / self.roofline_s if self.roofline_s else 0.0

  def to_json(self) -> dict[str, Any]:
    out = {k: v for k, v in dataclasses.asdict(self).items() if k != "chip"}
    out.update(chip=self.chip.name, usable_hbm_bytes=self.chip.usable_hbm_bytes, hbm_bytes=self.hbm_bytes,
               headroom=self.headroom)
    if self.fits and self.program == "train_step":
      out.update(compute_s=self.compute_s, memory_s=self.memory_s, roofline_s=self.roofline_s,
                 ceiling=self.ceiling)
    return out


_OOM = re.compile(r"required for (.*?) \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _is_oom(e: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e)


def compile_step(lower: Callable[[], Any], devices: Sequence[jax.Device]) -> tuple[Report, Any]:
  """Compiles `lower()` (a `jax.stages.Lowered`) for TPU; returns `(report, compiled)`, `compiled` None when it
  does not fit. Other compiler errors propagate."""
  chip = chip_of(devices)
  t0 = time.perf_counter()
  try:
    compiled = lower().compile()
  except jax.errors.JaxRuntimeError as e:
    if not _is_oom(e):
      raise
    message = " ".join(str(e).split("=== Source Location")[0].split())
    m = _OOM.search(message)
    required = int(float(m.group(2)) * _UNITS[m.group(3)]) if m else None
    return Report(chip, len(devices), False, time.perf_counter() - t0, error=message,
                  required_bytes=required), None
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else {}
  report = Report(chip, len(devices), True, compile_s,
                  argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
                  alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                  code_bytes=int(mem.generated_code_size_in_bytes), flops=float(cost.get("flops", 0.0)),
                  bytes_accessed=float(cost.get("bytes accessed", 0.0)),
                  compiler_optimal_s=cost.get("optimal_seconds"))
  if report.hbm_bytes > chip.usable_hbm_bytes:  # The compiler accepted it but our sum says otherwise.
    report.fits, report.required_bytes = False, report.hbm_bytes
    report.error = (f"arguments + outputs + temporaries = {report.hbm_bytes / GiB:.2f} GiB exceed the usable "
                    f"{chip.usable_hbm_bytes / GiB:.2f} GiB")
  return report, compiled


def _gib(n: float) -> str:
  return f"{n / GiB:.2f} GiB"


def format_report(report: Report) -> str:
  """Human-readable lines; the last is the verdict ("fits" with the headroom, or "DOES NOT FIT")."""
  chip = report.chip
  mesh = f", mesh {report.mesh}" if report.mesh else ""
  lines = [f"TPU {chip.name} x {report.num_chips} chips{mesh}: {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, "
           f"{chip.hbm_bytes_per_s / 1e9:.0f} GB/s, {_gib(chip.usable_hbm_bytes)} usable HBM per chip; "
           f"compiled in {report.compile_s:.1f} s"]
  if report.fits:
    lines.append(
        f"HBM per chip: {_gib(report.hbm_bytes)} = arguments {_gib(report.argument_bytes)} + outputs "
        f"{_gib(report.output_bytes)} - donated {_gib(report.alias_bytes)} + temporaries {_gib(report.temp_bytes)}"
        f" + program {_gib(report.code_bytes)}")
    if report.program == "sample":
      lines += [
          f"KV caches per chip: {_gib(report.kv_cache_bytes or 0)} ({report.tokens} positions per sample)",
          f"compiler's count, the decode loop's body once: {report.flops / 1e9:.2f} GFLOP, "
          f"{report.bytes_accessed / 1e9:.2f} GB of HBM traffic per chip",
      ]
    else:
      lines += [
          f"per chip per step: {report.total_flops / 1e12:.3f} TFLOP, {report.bytes_accessed / 1e9:.2f} GB of HBM "
          f"traffic" + (f" ({report.cost_note})" if report.cost_note else ""),
          *([f"  of which {report.kernel_flops / 1e12:.3f} TFLOP in Pallas attention kernels, counted from the "
             "tiles they compute (the compiler's cost analysis does not see into them)"] if report.kernel_flops
            else []),
          f"roofline step {report.roofline_s * 1e3:.1f} ms (compute {report.compute_s * 1e3:.1f} ms, memory "
          f"{report.memory_s * 1e3:.1f} ms): {'compute' if report.compute_s >= report.memory_s else 'memory'} "
          f"bound, ceiling {report.ceiling:.0%} of peak",
      ]
    lines.append(f"fits: {_gib(report.hbm_bytes)} of {_gib(chip.usable_hbm_bytes)} per chip, headroom "
                 f"{report.headroom:.0%}")
  else:
    lines.append(f"DOES NOT FIT on {chip.name}: {report.error}")
  return "\n".join(lines)
