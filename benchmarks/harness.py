"""Shared measurement helpers for the benchmarks: timing, compile time, memory, matmul peak, JSON results.

Every benchmark reports the median of >= 5 steps after warm-up, the compile time separately, the process's
peak resident memory and XLA's compiled memory analysis, and the machine's measured float32 matmul rate so
that model-FLOPs utilisation can be read against what this machine actually does.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from experiments.configs import common_config

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def block(tree):
  return jax.tree_util.tree_map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def compile_fn(fn, *args, **jit_kwargs) -> tuple[Any, float, dict[str, Any]]:
  """AOT-compiles `fn` (already jitted, e.g. a trainer's step, or `jax.jit(fn, **jit_kwargs)`) for `args`; returns
  (compiled, compile seconds, cost + memory analysis)."""
  t0 = time.perf_counter()
  jitted = fn if hasattr(fn, "lower") and not jit_kwargs else jax.jit(fn, **jit_kwargs)
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - t0
  return compiled, seconds, analysis(compiled)


# ---------------------------------------------------------------------------------------------------------------
# The trainers' configs for a benchmark's model, so that `train.steps` builds the very step that trains.
# ---------------------------------------------------------------------------------------------------------------
def vqvae_config(model: dict[str, Any], clip: tuple[int, int, int], batch: int, *, dtype: str = "float32",
                 mesh: tuple[int, int, int] = (-1, 1, 1)) -> ml_collections.ConfigDict:
  """The VQ-VAE trainer's config (optimizer, clipping, schedule as in `experiments/configs`) for module arguments
  `model` on clips `(T, H, W)` with `H == W`."""
  config = common_config.vqvae_base()
  config.model = ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
  config.data.seq_len, config.data.resolution = int(clip[0]), int(clip[1])
  config.batch_size, config.compute_dtype, config.mesh = int(batch), str(dtype), tuple(mesh)
  return config


GPT_DERIVED = ("shape", "n_codes", "embedding_dim", "frame_shape", "class_cond_dim")


def gpt_config(model: dict[str, Any], batch: int, *, dtype: str = "float32",
               mesh: tuple[int, int, int] = (-1, 1, 1)) -> ml_collections.ConfigDict:
  """The prior trainer's config for GPT module arguments `model` (latent grid, codebook and conditioning become
  `config.derived`, as the trainer derives them from its VQ-VAE)."""
  config = common_config.gpt_base()
  rest = {k: v for k, v in model.items() if k not in GPT_DERIVED}
  config.model = ml_collections.ConfigDict({**rest, "class_cond": bool(model.get("class_cond_dim"))})
  frame_shape = tuple(model.get("frame_shape") or (0, 0))
  config.derived = ml_collections.ConfigDict(dict(
      shape=tuple(model["shape"]), n_codes=int(model["n_codes"]), embedding_dim=int(model["embedding_dim"]),
      frame_shape=frame_shape, class_cond_dim=int(model.get("class_cond_dim") or 0)))
  config.batch_size, config.compute_dtype, config.mesh = int(batch), str(dtype), tuple(mesh)
  return config


def random_batch(abstract_batch: dict[str, jax.ShapeDtypeStruct], high: dict[str, int], seed: int = 1
                 ) -> dict[str, jax.Array]:
  """A batch of `abstract_batch`'s shapes and shardings: ints uniform in `[0, high[name])`, floats in [-0.5, 0.5]."""
  out = {}
  for i, (name, a) in enumerate(sorted(abstract_batch.items())):
    key = jax.random.PRNGKey(seed + i)
    if jnp.issubdtype(a.dtype, jnp.integer):
      x = jax.random.randint(key, a.shape, 0, high[name], a.dtype)
    else:
      x = jax.random.uniform(key, a.shape, a.dtype, -0.5, 0.5)
    out[name] = jax.device_put(x, a.sharding)
  return out


def analysis(compiled) -> dict[str, Any]:
  out: dict[str, Any] = {}
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    out["flops"] = float(cost.get("flops", 0.0))
    out["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  except Exception:  # pylint: disable=broad-except  # some backends have no cost model
    pass
  try:
    mem = compiled.memory_analysis()
    out["temp_bytes"] = int(mem.temp_size_in_bytes)
    out["argument_bytes"] = int(mem.argument_size_in_bytes)
    out["output_bytes"] = int(mem.output_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  return out


def time_steps(step: Callable[[], Any], *, warmup: int = 2, repeats: int = 5) -> dict[str, float]:
  """Median/min/max wall seconds of `step()` (which must return JAX values) after `warmup` calls."""
  for _ in range(warmup):
    block(step())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(step())
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """Measured float32 matmul rate in FLOP/s for an n x n jitted matmul on the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  t = time_steps(lambda: f(a, b), warmup=3, repeats=repeats)
  return 2.0 * n ** 3 / t["median_s"]


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info() -> dict[str, Any]:
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "cpu_count": os.cpu_count(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
  }


def write_results(name: str, payload: dict[str, Any], results_dir: str | os.PathLike = RESULTS_DIR
                  ) -> pathlib.Path:
  results_dir = pathlib.Path(results_dir)
  results_dir.mkdir(parents=True, exist_ok=True)
  path = results_dir / f"{name}.json"
  payload = {"machine": machine_info(), **payload}
  path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
  print(f"wrote {path}")
  return path


# ------------------------------------------------------------------------------------ model-level benchmarks ----
# Added for vqvae_bench / prior_bench / sampling_bench: per-workload peak RSS, deadline-aware timing, and a
# results file rewritten after every row so an interrupted run keeps what finished.


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS counter (VmHWM) of this process; False where /proc does not allow it."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _proc_status_bytes(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def peak_rss_since_reset_bytes() -> int:
  """VmHWM (peak resident memory since the last `reset_peak_rss`), falling back to the lifetime peak."""
  hwm = _proc_status_bytes("VmHWM")
  return hwm if hwm is not None else peak_rss_bytes()


def parse_deadline(text: str | None) -> float | None:
  """'HH:MM' (UTC, today) or seconds since the epoch -> epoch seconds; None/'' -> no deadline."""
  if not text:
    return None
  if ":" in text:
    hh, mm = (int(p) for p in text.split(":"))
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
  return float(text)


def seconds_left(deadline: float | None) -> float:
  return float("inf") if deadline is None else deadline - time.time()


def time_steps_until(step: Callable[[], Any], *, warmup: int = 1, repeats: int = 5,
                     deadline: float | None = None) -> dict[str, Any]:
  """`time_steps`, but gives up (returning what it has and a `skipped` reason) when the remaining warm-up and
  `repeats` timed steps would not finish before `deadline` (the first warm-up step is the estimate)."""
  t0 = time.perf_counter()
  block(step())
  first = time.perf_counter() - t0
  if first * (warmup - 1 + repeats) > seconds_left(deadline):
    return {"first_step_s": first, "skipped": f"{repeats} steps of ~{first:.1f} s would pass the deadline"}
  for _ in range(warmup - 1):
    block(step())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(step())
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats,
          "first_step_s": first, "times_s": times}


def measure(fn: Callable, args: tuple, *, stateful: bool = False, warmup: int = 1, repeats: int = 5,
            deadline: float | None = None, matmul_flops: float | None = None, **jit_kwargs) -> dict[str, Any]:
  """Compiles `fn(*args)`, times it and records memory: one row of a model-level benchmark.

  `stateful`: `fn(state, *rest) -> (state, metrics)` with `state` donated (a jitted `fn`, such as a trainer's
  step, keeps its own shardings and donation); each timed call feeds the previous state back. The row holds the compile time, XLA's cost and memory analysis, the median step time, the peak
  RSS of compiling and of running (each since a reset of the kernel's counter) and, given `matmul_flops`,
  the model-FLOPs utilisation `flops / median_s / matmul_flops` (XLA's flops count a loop body once).
  """
  rss_before = _proc_status_bytes("VmRSS")
  reset_peak_rss()
  if stateful and not hasattr(fn, "lower"):
    jit_kwargs.setdefault("donate_argnums", (0,))
  compiled, compile_s, info = compile_fn(fn, *args, **jit_kwargs)
  row: dict[str, Any] = {"compile_s": compile_s, **info, "rss_before_bytes": rss_before,
                         "rss_compile_peak_bytes": peak_rss_since_reset_bytes()}
  reset_peak_rss()
  if stateful:
    carry = {"state": args[0]}

    def step():
      carry["state"], metrics = compiled(carry["state"], *args[1:])
      return carry["state"], metrics
  else:
    def step():
      return compiled(*args)
  row.update(time_steps_until(step, warmup=warmup, repeats=repeats, deadline=deadline))
  row["rss_run_peak_bytes"] = peak_rss_since_reset_bytes()
  row["rss_now_bytes"] = _proc_status_bytes("VmRSS")
  if matmul_flops and "median_s" in row and row.get("flops"):
    row["achieved_flops_per_s"] = row["flops"] / row["median_s"]
    row["mfu_vs_measured_matmul"] = row["achieved_flops_per_s"] / matmul_flops
  return row


class Recorder:
  """Rows of one benchmark script; rewrites `results/<name>.json` after every row (partial runs stay usable).

  With `merge=True` the rows already in that file are kept unless a row of the same name is added (to re-run a
  few workloads of a full run); every row records when it was measured and the matmul rate of its run.
  """

  def __init__(self, name: str, header: dict[str, Any], merge: bool = False,
               results_dir: str | os.PathLike = RESULTS_DIR):
    self.name, self.header, self.rows = name, header, []
    self.results_dir = pathlib.Path(results_dir)
    path = self.results_dir / f"{name}.json"
    run = {"date": machine_info()["date"], **{k: header[k] for k in ("matmul_flops_per_s", "load_average_start")
                                               if k in header}}
    self.header = {**header, "runs": [run]}
    if merge and path.exists():
      old = json.loads(path.read_text())
      self.rows = old.get("rows", [])
      self.header["runs"] = old.get("runs", []) + [run]

  def add(self, row: dict[str, Any]) -> dict[str, Any]:
    row = {**row, "load_average_1m": os.getloadavg()[0],
           "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if "matmul_flops_per_s" in self.header:
      row.setdefault("run_matmul_flops_per_s", self.header["matmul_flops_per_s"])
    self.rows = [r for r in self.rows if r.get("name") != row.get("name")] + [row]
    self.write()
    return row

  def write(self) -> pathlib.Path:
    return write_results(self.name, {**self.header, "rows": self.rows}, self.results_dir)


# ------------------------------------------------------------------------------------- command-line suites ----


def suite_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
  """The flags every benchmark script shares; a script adds its own before `parse_args()`."""
  parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", default="", help="comma-separated workload names (default: all, in order)")
  parser.add_argument("--skip", default="", help="comma-separated workload names to leave out")
  parser.add_argument("--phase", default="all", choices=("all", "targets", "extras"),
                      help="targets: the workloads with a reference/target; extras: scaling, bf16, ...")
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--deadline", default="", help="UTC 'HH:MM' or epoch seconds: skip what would not finish")
  parser.add_argument("--merge", action="store_true", help="keep the other rows already in the results file")
  parser.add_argument("--name", default="", help="results/<name>.json (default <script>[_quick])")
  parser.add_argument("--results_dir", default=str(RESULTS_DIR), help="where <name>.json is written")
  return parser


def select_workloads(args, workloads: dict[str, dict[str, Any]]) -> list[str]:
  """Names picked by `--only`, `--skip` and `--phase` (targets: rows without a `group`), in declaration order."""
  names = [n for n in (args.only.split(",") if args.only else workloads) if n not in args.skip.split(",")]
  if args.phase != "all":
    names = [n for n in names if n not in workloads or ("group" in workloads[n]) == (args.phase == "extras")]
  unknown = [n for n in names if n not in workloads]
  if unknown:
    raise SystemExit(f"unknown workload(s) {unknown}; choose from {list(workloads)}")
  return names


def run_suite(args, workloads: dict[str, dict[str, Any]], *, default_name: str, description: str,
              run_workload: Callable[..., dict[str, Any]], report: Callable[[str, dict[str, Any]], str | None],
              header: dict[str, Any] | None = None, matmul_at_end: bool = True) -> Recorder:
  """Measures the matmul rate, then runs each selected workload into `results/<name>.json`.

  `run_workload(name, spec, args, matmul, deadline) -> row`; a workload that raises is recorded as skipped with
  its error and the suite goes on. `report(name, row)` returns the line to print for a measured row, or None
  for a row that was not measured (its `skipped` reason is printed instead).
  """
  names = select_workloads(args, workloads)
  deadline = parse_deadline(args.deadline)
  matmul = matmul_peak()
  print(f"measured float32 matmul (2048^2, jitted): {matmul / 1e9:.1f} GFLOP/s", flush=True)
  rec = Recorder(args.name or (default_name + ("_quick" if args.quick else "")), {
      "description": description, "quick": args.quick, "matmul_flops_per_s": matmul,
      "load_average_start": list(os.getloadavg()), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), **(header or {}),
  }, merge=args.merge, results_dir=args.results_dir)
  for name in names:
    spec = workloads[name]
    if seconds_left(deadline) < 30:
      rec.add({"name": name, **{k: v for k, v in spec.items() if k != "model"},
               "skipped": "deadline reached before it started"})
      print(f"{name}: skipped (deadline)", flush=True)
      continue
    try:
      row = run_workload(name, spec, args, matmul, deadline)
    except Exception as e:  # pylint: disable=broad-except  # record it and go on with the other workloads
      traceback.print_exc()
      row = {"name": name, "skipped": f"failed: {type(e).__name__}: {str(e)[:500]}"}
    row = rec.add(row)
    line = report(name, row)
    print(line if line is not None else f"{name}: {row.get('skipped')}", flush=True)
  if matmul_at_end:
    rec.add({"name": "matmul_peak_end", "matmul_flops_per_s": matmul_peak()})
  return rec
