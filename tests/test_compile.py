"""The ahead-of-time TPU compile tool: its arithmetic, its verdicts, and real TPU compiles of the runlocal configs.

The TPU compiles need libtpu (`pip install -e '.[tpu]'`), importable either in this interpreter or from the
directory `$VIDEOGPT_LIBTPU_DIR` (a `pip install --target` directory, which `.ci/run` fills: outside `.venv`, so
no other test's JAX loads it). They run the tool in a subprocess with `JAX_PLATFORMS=cpu`; libtpu admits one
process at a time.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import pytest

from videogpt_jax import aot

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBTPU_DIR = os.environ.get("VIDEOGPT_LIBTPU_DIR", "")
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None or (
    bool(LIBTPU_DIR) and (pathlib.Path(LIBTPU_DIR) / "libtpu").is_dir())
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason=f"libtpu not installed: {aot.INSTALL_HINT} (or pip install --target DIR "
                            "'libtpu==0.0.42.1' and set VIDEOGPT_LIBTPU_DIR=DIR)")
V5E = aot.CHIPS["TPU v5 lite"]


def _env(with_libtpu: bool = True) -> dict[str, str]:
  path = [str(ROOT)] + ([LIBTPU_DIR] if with_libtpu and LIBTPU_DIR else [])
  return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": "",
          "PYTHONPATH": os.pathsep.join(path)}


def _tool(*args: str, env=None, timeout: float = 1500) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.compile", *args], cwd=ROOT, env=env or _env(),
                        capture_output=True, text=True, timeout=timeout)


def test_roofline_and_headroom_arithmetic():
  # 1 s of v5e compute, 2 s of its HBM traffic: memory bound, ceiling 50%; a quarter of the usable HBM held.
  report = aot.Report(V5E, 8, True, 1.0, argument_bytes=V5E.usable_hbm_bytes // 4, output_bytes=100,
                      alias_bytes=100, flops=197e12, bytes_accessed=2 * 819e9)
  assert report.compute_s == pytest.approx(1.0) and report.memory_s == pytest.approx(2.0)
  assert report.roofline_s == pytest.approx(2.0) and report.ceiling == pytest.approx(0.5)
  assert report.hbm_bytes == V5E.usable_hbm_bytes // 4
  assert report.headroom == pytest.approx(0.75, abs=1e-6)
  text = aot.format_report(report)
  assert text.splitlines()[-1].startswith("fits: ") and "headroom 75%" in text
  assert "memory bound, ceiling 50% of peak" in text
  assert json.loads(json.dumps(report.to_json()))["ceiling"] == pytest.approx(0.5)


def test_kernel_flops_join_the_roofline():
  # The compiler's count leaves Pallas kernels out; the report adds them (0.5 s of v5e compute) to its own.
  report = aot.Report(V5E, 8, True, 1.0, flops=98.5e12, kernel_flops=98.5e12, bytes_accessed=819e9)
  assert report.total_flops == pytest.approx(197e12) and report.ceiling == pytest.approx(1.0)
  assert "of which 98.500 TFLOP in Pallas attention kernels" in aot.format_report(report)
  assert "Pallas" not in aot.format_report(aot.Report(V5E, 8, True, 1.0, flops=1e12, bytes_accessed=1e9))


def test_pallas_flops_of_a_splash_prior():
  """Per chip: blocks x examples per chip x heads per chip x one head's splash flops (self- and cross-attention);
  nothing for the XLA attention."""
  from videogpt_jax import sharding  # pylint: disable=import-outside-toplevel
  from videogpt_jax.models import gpt as gpt_lib, splash_attention  # pylint: disable=import-outside-toplevel
  from videogpt_jax.train import aot_steps  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(types.SimpleNamespace(mesh=(1, 1, 1)), devices=jax.devices()[:1])
  kw = dict(shape=(2, 16, 16), n_codes=16, embedding_dim=8, hidden_dim=48, heads=2, layers=3, attn_type="full",
            n_cond_frames=1, frame_shape=(64, 64), remat=True)
  gpt = gpt_lib.GPT(**kw, attn_kernel="splash")
  self_attn = splash_attention.train_flops(10, 128, 128, 24, 24, recompute=True)
  cross = splash_attention.train_flops(4 * 2, 128, 128, 24, 120, recompute=True)  # 256 frame features: 2 tiles
  assert aot_steps.pallas_flops(gpt, mesh, 4) == pytest.approx(3 * 4 * 2 * (self_attn + cross))
  assert aot_steps.pallas_flops(gpt_lib.GPT(**kw), mesh, 4) == 0.0


class _Refused:
  """A `Lowered` whose compile is refused the way the TPU compiler refuses a step too big for HBM."""

  def compile(self):
    raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (22.01G) "
        "exceeds available HBM (15.75G).")


def test_out_of_memory_verdict_is_one_line():
  devices = [types.SimpleNamespace(device_kind="TPU v5 lite")] * 8
  report, compiled = aot.compile_step(lambda: _Refused(), devices)
  assert compiled is None and not report.fits
  assert report.required_bytes == int(22.01 * 2**30)
  verdict = aot.format_report(report).splitlines()[-1]
  assert verdict.startswith("DOES NOT FIT on v5e:") and "22.01G" in verdict and "15.75G" in verdict


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here")
def test_without_libtpu_the_tool_says_how_to_install_it():
  proc = _tool("--config=experiments/configs/vqvae_bair.py:runlocal", "--topology=v5e:2x2",
               env=_env(with_libtpu=False), timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
  assert errors == [f"ERROR: compiling for TPU needs libtpu, which is not installed: {aot.INSTALL_HINT}"]


@needs_libtpu
def test_usable_hbm_is_the_compilers_limit(tmp_path):
  # An op over 4 x 20 GiB sharded over a v5e:2x2: the compiler refuses it and names its limit, which must be ours.
  script = ("import jax, jax.numpy as jnp\n"
            "from jax.sharding import NamedSharding, PartitionSpec as P\n"
            "from videogpt_jax import aot\n"
            "devices = aot.topology_devices('v5e:2x2')\n"
            "mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)\n"
            "x = jax.ShapeDtypeStruct((4 * 80000, 65536), jnp.float32, sharding=NamedSharding(mesh, P('data')))\n"
            "report, _ = aot.compile_step(lambda: jax.jit(lambda a: (a * 2, a + 1)).lower(x), devices)\n"
            "print(aot.format_report(report).splitlines()[-1])\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  verdict = proc.stdout.strip().splitlines()[-1]
  assert verdict.startswith("DOES NOT FIT on v5e:")
  assert f"available HBM ({V5E.usable_hbm_bytes / 2**30:.2f}G)" in verdict


@needs_libtpu
def test_bad_topology_is_one_line():
  proc = _tool("--config=experiments/configs/vqvae_bair.py:runlocal", "--topology=v5e-8", timeout=300)
  assert proc.returncode == 2
  assert "--topology='v5e-8'" in proc.stderr and "Traceback" not in proc.stderr


@needs_libtpu
@pytest.mark.parametrize("config", ["vqvae_bair.py:runlocal", "gpt_bair.py:runlocal"])
def test_runlocal_configs_compile_for_tpu(config, tmp_path):
  out = tmp_path / "report.json"
  proc = _tool(f"--config=experiments/configs/{config}", "--topology=v5e:2x2", f"--json={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith("TPU v5e x 4 chips, mesh {'data': 4, 'fsdp': 1, 'model': 1}")
  assert lines[-1].startswith("fits: ")
  report = json.loads(out.read_text())
  assert report["fits"] and report["chip"] == "v5e" and report["num_chips"] == 4
  assert report["flops"] > 0 and report["bytes_accessed"] > 0
  # The state is donated: its outputs reuse the argument buffers.
  assert report["alias_bytes"] > 0.5 * report["output_bytes"]
  assert 0 < report["hbm_bytes"] < report["usable_hbm_bytes"] and 0 < report["ceiling"] <= 1


@needs_libtpu
def test_scanned_prior_costs_are_extrapolated_from_block_compiles(tmp_path):
  """The compiler counts a loop's body once, so a scanned prior's costs come from 1- and 2-block compiles; their
  extrapolation must give what the compiler counts for the same depth unscanned (3 blocks here)."""
  reports = {}
  for name, scan in (("scan", "True"), ("loop", "False")):
    out = tmp_path / f"{name}.json"
    proc = _tool("--config=experiments/configs/gpt_bair.py:runlocal", "--topology=v5e:2x2", f"--json={out}",
                 "--config.model.layers=3", f"--config.model.scan_layers={scan}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports[name] = json.loads(out.read_text())
  scan, loop = reports["scan"], reports["loop"]
  assert "extrapolated from 1- and 2-block compiles" in scan["cost_note"] and not loop["cost_note"]
  probes = scan["block_probes"]
  assert scan["flops"] == pytest.approx(probes["1"]["flops"] + 2 * (probes["2"]["flops"] - probes["1"]["flops"]))
  # (XLA may unroll a loop this short, and then counts every block itself; the BAIR prior's 16-block loop it keeps,
  # and counts 1.4 of 24 TFLOP: benchmarks/results/tpu_compile.json.)
  assert scan["loop_flops"] <= 1.001 * scan["flops"]
  assert scan["flops"] == pytest.approx(loop["flops"], rel=0.02)
  assert scan["bytes_accessed"] == pytest.approx(loop["bytes_accessed"], rel=0.1)


def test_suite_table_shows_fit_and_refusal():
  sys.path.insert(0, str(ROOT))
  from benchmarks import tpu_compile  # pylint: disable=import-outside-toplevel

  fits = aot.Report(V5E, 8, True, 12.0, argument_bytes=2**30, temp_bytes=2**30, flops=197e12, bytes_accessed=819e9,
                    mesh={"data": 8, "fsdp": 1, "model": 1})
  refused = aot.Report(V5E, 8, False, 30.0, error="RESOURCE_EXHAUSTED", required_bytes=22 * 2**30,
                       mesh={"data": 8, "fsdp": 1, "model": 1})
  rows = [{"name": n, "config": "experiments/configs/gpt_bair.py", "overrides": ["--config.model.remat=True"],
           **r.to_json()} for n, r in (("a", fits), ("b", refused))]
  lines = tpu_compile.table({"rows": rows})
  assert len(lines) == 4
  assert "| a | `gpt_bair.py` model.remat=True | v5e ×8, 8×1×1 | 2.00 GiB (15.75 GiB) | fits, 87% headroom |" in lines[2]
  assert "| 197.00 | 819 | 1000 ms (1000 ms) | 100% | 12 s |" in lines[2]
  assert "**does not fit** (needs 22.00 GiB)" in lines[3]
  assert "Not measured" in tpu_compile.table(None)[0]

  sampler = aot.Report(V5E, 8, True, 40.0, argument_bytes=2**30, temp_bytes=2**30, flops=1e9, bytes_accessed=1e9,
                       mesh={"data": 8, "fsdp": 1, "model": 1}, program="sample", kv_cache_bytes=2**29, tokens=8192)
  rows.append({"name": "s", "config": "experiments/configs/gpt_bair.py", "overrides": [], **sampler.to_json()})
  lines = tpu_compile.table({"rows": rows})
  assert len(lines) == 10 and lines[:4] == tpu_compile.table({"rows": rows[:2]})  # train steps first, apart
  assert lines[-1] == ("| s | `gpt_bair.py` | v5e ×8, 8×1×1 | 2.00 GiB (15.75 GiB) | fits, 87% headroom | 0.50 GiB | "
                       "8192 | 40 s |")


# Prepended to the scripts that compile kernels for TPU: `jax`, `jnp`, `NamedSharding`, `P`, `aot`, and `mesh`, a
# 4-chip v5e mesh with one `data` axis.
_V5E_MESH = ("import jax, jax.numpy as jnp\n"
             "from jax.sharding import NamedSharding, PartitionSpec as P\n"
             "from videogpt_jax import aot\n"
             "devices = aot.topology_devices('v5e:2x2')\n"
             "mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)\n")


def _on_v5e_mesh(script: str) -> list[str]:
  """Runs `script` after `_V5E_MESH` in a subprocess with libtpu; its stdout lines (fails on a non-zero exit)."""
  proc = subprocess.run([sys.executable, "-c", _V5E_MESH + script], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip().splitlines()


@needs_libtpu
def test_splash_attention_compiles_for_tpu():
  """The real Mosaic kernel (not the interpreter) lowers and compiles from this CPU host, forward and backward, for
  full and sparse attention, inside the shard_map it takes under a mesh: batch split over 4 chips."""
  script = ("from videogpt_jax.models import attention_patterns as ap, splash_attention  # noqa: F401\n"
            "x = jax.ShapeDtypeStruct((4, 1024, 4, 64), jnp.bfloat16, sharding=NamedSharding(mesh, P('data')))\n"
            "for attn_type in ('full', 'sparse'):\n"
            "  p = ap.make(attn_type, (4, 16, 16), kernel='splash')\n"
            "  loss = lambda q, k, v: (p.attend(q, k, v).astype(jnp.float32) ** 2).sum()\n"
            "  with jax.set_mesh(mesh):\n"
            "    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, x, x)\n"
            "  compiled = lowered.compile()\n"
            "  print(attn_type, lowered.as_text().count('tpu_custom_call'), compiled.as_text().count('all-gather'),\n"
            "        compiled.memory_analysis().argument_size_in_bytes)\n")
  lines = _on_v5e_mesh(script)[-2:]
  # Three Mosaic kernels each (forward, dq, dkv), no gathered batch; each chip holds its quarter of q, k, v.
  assert lines == [f"{a} 3 0 {3 * 1024 * 4 * 64 * 2}" for a in ("full", "sparse")], lines


@needs_libtpu
def test_axial_attention_kernel_compiles_for_tpu():
  """The VQ-VAE's fused axial-attention kernel (Mosaic, not the interpreter) lowers and compiles from this CPU host
  for each axis, forward and backward, inside its shard_map under a 4-chip mesh; the compiler's cost analysis
  counts the flops the kernel declares (the compiler cannot see inside it), and no chip gathers the batch."""
  script = ("from videogpt_jax.models import axial_attention, axial_kernel\n"
            "shape = (8, 4, 16, 16, 240)\n"
            "x = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, P('data')))\n"
            "for axis in (3, 2, 1):\n"
            "  m = axial_attention.AxisAttention(2, axis, kernel='pallas', platform='tpu')\n"
            "  params = jax.eval_shape(m.init, jax.random.key(0), x)\n"
            "  loss = lambda p, x: (m.apply(p, x).astype(jnp.float32) ** 2).sum()\n"
            "  with jax.set_mesh(mesh):\n"
            "    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x)\n"
            "  compiled = lowered.compile()\n"
            "  cost = compiled.cost_analysis()\n"
            "  n = 2 * 4 * 16 * 16  # tokens per chip\n"
            "  declared = axial_kernel._flops(n, 240, 128, 2, backward=False) + "
            "axial_kernel._flops(n, 240, 128, 2, backward=True)\n"
            "  print(axis, lowered.as_text().count('tpu_custom_call'), compiled.as_text().count('all-gather'),\n"
            "        int(cost['flops'] >= declared))\n")
  lines = _on_v5e_mesh(script)[-3:]
  # Two Mosaic kernels per axis (forward; backward with the weight gradients), the declared flops counted.
  assert lines == [f"{axis} 2 0 1" for axis in (3, 2, 1)], lines


@needs_libtpu
def test_prior_sampler_compiles_for_tpu_with_the_caches_split(tmp_path):
  """`--program=sample`: the KV-cached sampler of the BAIR prior's runlocal variant, 8 samples over 4 chips. The
  report's cache share is a quarter of the caches, and the compiled program writes per-chip caches of 2 samples."""
  out = tmp_path / "sample.json"
  proc = _tool("--config=experiments/configs/gpt_bair.py:runlocal", "--topology=v5e:2x2", "--program=sample",
               "--sample_batch=8", f"--json={out}", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert any(line.startswith("KV caches per chip: ") for line in lines) and lines[-1].startswith("fits: ")
  report = json.loads(out.read_text())
  sys.path.insert(0, str(ROOT))
  from experiments.configs import gpt_bair, vqvae_bair  # pylint: disable=import-outside-toplevel
  from videogpt_jax.models import gpt as gpt_lib, sampling  # pylint: disable=import-outside-toplevel
  from videogpt_jax.train import steps  # pylint: disable=import-outside-toplevel
  gpt = gpt_lib.gpt_from_config(steps.derive_gpt_config(gpt_bair.get_config("runlocal"),
                                                        vqvae_bair.get_config("runlocal"), None))
  assert report["program"] == "sample" and report["tokens"] == gpt.seq_len
  assert report["kv_cache_bytes"] * 4 == sampling.kv_cache_bytes(gpt, 8)
  assert "ceiling" not in report  # a loop counted once is no step: no roofline for the sampler

  script = ("import re, importlib\n"
            "from videogpt_jax import aot\n"
            "from videogpt_jax.train import aot_steps\n"
            "get = lambda m: importlib.import_module('experiments.configs.' + m).get_config('runlocal')\n"
            "_, compiled = aot_steps.compile_sampler(get('gpt_bair'), aot.topology_devices('v5e:2x2'),\n"
            "                                        vqvae_config=get('vqvae_bair'), batch=8)\n"
            "print(sorted(set(re.findall(r'= (?:f32|bf16)\\[(\\d+),[\\d,]+\\]\\S* dynamic-update-slice', compiled.as_text()))))\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Every cache write (keys and values of every layer; not the int token buffer) holds 2 of the 8 samples per chip.
  assert proc.stdout.strip().splitlines()[-1] == "['2']", proc.stdout[-2000:]


@needs_libtpu
def test_sampler_of_a_vqvae_config_is_one_line():
  proc = _tool("--config=experiments/configs/vqvae_bair.py:runlocal", "--topology=v5e:2x2", "--program=sample",
               timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
  assert len(errors) == 1 and "--program=sample" in errors[0] and "only a prior has a sampler" in errors[0]
