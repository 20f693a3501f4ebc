"""Forward+backward time of each 3D-convolution layer of the benchmark VQ-VAE, per conv formulation, on CPU.

The benchmark VQ-VAE (batch 4, hiddens 128, input 16x64x64x3, downsample (4,4,4)) has six distinct conv layer
shapes (L1-L6 in `shared/reference/CPU_CONV_NOTES.md`); M1/M2 are the mixed-stride (2,1,1) layers of a
(4,2,2)-style model at the same sizes. Each layer is timed as `jax.grad` w.r.t. input and kernel of
`<conv(x, w), g>` for "direct", every exact formulation of `videogpt_jax.models.conv_cpu`, and "auto"; medians
after warm-up, compile time apart. `--stack` also times the whole encoder+decoder conv stack (BatchNorm in
training mode, ReLU, residual pairs; no attention) with "auto" against "direct".

  .venv/bin/python benchmarks/conv_layers.py              # all layers + stack -> results/conv_layers.json
  .venv/bin/python benchmarks/conv_layers.py --layers L3,L4 --no-stack --no-write
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import pathlib
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from videogpt_jax.models import conv_cpu, conv_ops  # noqa: E402

B, C = 4, 128
# name: (kind, input shape, [(kernel shape, strides), ...]); a layer with two kernels applies them in sequence.
LAYERS = {
    "L1": ("conv", (B, 16, 64, 64, 3), [((4, 4, 4, 3, C), (2, 2, 2))]),
    "L2": ("conv", (B, 8, 32, 32, C), [((4, 4, 4, C, C), (2, 2, 2))]),
    "L3": ("conv", (B, 4, 16, 16, C), [((3, 3, 3, C, C), (1, 1, 1))]),
    "L4": ("conv", (B, 4, 16, 16, C), [((3, 3, 3, C, C // 2), (1, 1, 1)), ((1, 1, 1, C // 2, C), (1, 1, 1))]),
    "L5": ("transpose", (B, 4, 16, 16, C), [((4, 4, 4, C, C), (2, 2, 2))]),
    "L6": ("transpose", (B, 8, 32, 32, C), [((4, 4, 4, C, 3), (2, 2, 2))]),
    "M1": ("conv", (B, 8, 32, 32, C), [((4, 4, 4, C, C), (2, 1, 1))]),
    "M2": ("transpose", (B, 4, 32, 32, C), [((4, 4, 4, C, C), (2, 1, 1))]),
}


def _layer_fn(kind, specs, impl):
  op = conv_ops.conv3d if kind == "conv" else conv_ops.conv_transpose3d

  def fwd(x, ws):
    for w, (_, strides) in zip(ws, specs):
      x = op(x, w, strides, impl=impl)
    return x
  return fwd


def _flops(kind, x_shape, specs):
  total, shape = 0.0, x_shape
  for kshape, strides in specs:
    if kind == "conv":
      total += conv_cpu.flops_conv3d(shape, kshape, strides)
      shape = (shape[0], *[n // s for n, s in zip(shape[1:4], strides)], kshape[-1])
    else:
      total += conv_cpu.flops_conv_transpose3d(shape, kshape)
      shape = (shape[0], *[n * s for n, s in zip(shape[1:4], strides)], kshape[-1])
  return total * 3  # forward, input gradient, kernel gradient


def _compile_layer(name, impl):
  kind, x_shape, specs = LAYERS[name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  ws = [jnp.asarray(rng.normal(size=k) / np.sqrt(np.prod(k[:4])), jnp.float32) for k, _ in specs]
  fwd = _layer_fn(kind, specs, impl)
  y_shape = jax.eval_shape(fwd, x, ws).shape
  g = jnp.asarray(rng.normal(size=y_shape), jnp.float32)
  # The cotangent is an argument: as a closed-over constant XLA would spend many seconds constant-folding it.
  # A layer's forward + backward, not a train step (those come from `videogpt_jax.train.steps`).
  step = jax.grad(lambda x, ws, g: jnp.vdot(fwd(x, ws), g), argnums=(0, 1))
  compiled, compile_s, _ = harness.compile_fn(step, x, ws, g)
  return (lambda: compiled(x, ws, g)), compile_s


def time_layer(name, impls, repeats):
  """Times `impls` round-robin (one call each per round) so that load drift on the shared cores hits all alike.

  `repeats[impl]` rounds per impl after one warm-up call; returns per-impl stats in ms.
  """
  kind, x_shape, specs = LAYERS[name]
  steps, out = {}, {}
  for impl in impls:
    steps[impl], compile_s = _compile_layer(name, impl)
    harness.block(steps[impl]())
    out[impl] = {"compile_s": compile_s, "times": []}
  for rnd in range(max(repeats.values())):
    for impl in impls:
      if rnd < repeats[impl]:
        t0 = time.perf_counter()
        harness.block(steps[impl]())
        out[impl]["times"].append(1e3 * (time.perf_counter() - t0))
  flops = _flops(kind, x_shape, specs)
  for impl, r in out.items():
    times = r.pop("times")
    r.update(ms=statistics.median(times), min_ms=min(times), max_ms=max(times), repeats=len(times),
             gflops=flops / statistics.median(times) / 1e6)
  return out


def _auto_choice(name):
  kind, x_shape, specs = LAYERS[name]
  choose = conv_ops.auto_conv if kind == "conv" else conv_ops.auto_transpose
  return [choose(jax.default_backend(), x_shape, k, s) for k, s in specs]


# ------------------------------------------------------------------------------------------------ conv stack


def _stack_params(rng):
  def w(*shape):
    return jnp.asarray(rng.normal(size=shape) / np.sqrt(np.prod(shape[:4])), jnp.float32)

  def res():
    return {"c3": w(3, 3, 3, C, C // 2), "c1": w(1, 1, 1, C // 2, C)}
  return {"e1": w(4, 4, 4, 3, C), "e2": w(4, 4, 4, C, C), "e3": w(3, 3, 3, C, C), "eres": [res(), res()],
          "d3": w(3, 3, 3, C, C), "dres": [res(), res()], "t1": w(4, 4, 4, C, C), "t2": w(4, 4, 4, C, 3)}


def _bn_relu(x):
  mean = x.mean(axis=(0, 1, 2, 3))
  var = x.var(axis=(0, 1, 2, 3))
  return jax.nn.relu((x - mean) * jax.lax.rsqrt(var + 1e-5))


def _stack(params, video, impl):
  conv = lambda x, w, s=(1, 1, 1): conv_ops.conv3d(x, w, s, impl=impl)  # noqa: E731

  def res(x, p):
    h = conv(_bn_relu(x), p["c3"])
    return x + _bn_relu(conv(_bn_relu(h), p["c1"]))
  h = jax.nn.relu(conv(video, params["e1"], (2, 2, 2)))
  h = jax.nn.relu(conv(h, params["e2"], (2, 2, 2)))
  h = conv(h, params["e3"])
  for p in params["eres"]:
    h = res(h, p)
  h = conv(_bn_relu(h), params["d3"])
  for p in params["dres"]:
    h = res(h, p)
  h = _bn_relu(h)
  h = jax.nn.relu(conv_ops.conv_transpose3d(h, params["t1"], (2, 2, 2), impl=impl))
  return conv_ops.conv_transpose3d(h, params["t2"], (2, 2, 2), impl=impl)


def time_stack(impl, warmup, repeats):
  rng = np.random.default_rng(0)
  params = _stack_params(rng)
  video = jnp.asarray(rng.uniform(-0.5, 0.5, size=(B, 16, 64, 64, 3)), jnp.float32)
  def loss_and_loss(p, v):
    loss = jnp.mean((_stack(p, v, impl) - v) ** 2)
    return loss, loss

  step = jax.grad(loss_and_loss, has_aux=True)  # -> (grads, loss): the conv stack's cost, not a train step
  compiled, compile_s, _ = harness.compile_fn(step, params, video)
  t = harness.time_steps(lambda: compiled(params, video), warmup=warmup, repeats=repeats)
  loss = float(compiled(params, video)[1])
  return {"ms": 1e3 * t["median_s"], "min_ms": 1e3 * t["min_s"], "max_ms": 1e3 * t["max_s"],
          "repeats": repeats, "compile_s": compile_s, "loss": loss}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", default=",".join(LAYERS))
  parser.add_argument("--impls", default="", help="comma list; default: direct, every form, auto")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--direct-repeats", type=int, default=2, help="direct strided/transposed take seconds")
  parser.add_argument("--skip-direct", default="", help="layers whose direct form is not timed")
  parser.add_argument("--no-stack", action="store_true")
  parser.add_argument("--stack-direct-repeats", type=int, default=1)
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()
  skip_direct = set(filter(None, args.skip_direct.split(",")))
  load_start = os.getloadavg()

  results = {}
  for name in args.layers.split(","):
    kind, x_shape, specs = LAYERS[name]
    forms = conv_cpu.CONV_FORMS if kind == "conv" else conv_cpu.TRANSPOSE_FORMS
    impls = args.impls.split(",") if args.impls else ["direct", *forms, "auto"]
    row = {"kind": kind, "x": list(x_shape), "kernels": [[list(k), list(s)] for k, s in specs],
           "auto_choice": _auto_choice(name), "impls": {}}
    impls = [i for i in impls if i in ("auto", "direct") or i in forms]
    if "direct" in impls and name in skip_direct:
      impls.remove("direct")
      row["impls"]["direct"] = {"skipped": "too slow to time on the shared machine"}
    slow = kind == "transpose" or any(s != (1, 1, 1) for _, s in specs)
    reps = {i: args.direct_repeats if (i == "direct" and slow) else args.repeats for i in impls}
    for impl, r in time_layer(name, impls, reps).items():
      row["impls"][impl] = r
      print(f"{name} {impl:12s} {r['ms']:10.1f} ms  [{r['min_ms']:.1f}-{r['max_ms']:.1f}] n={r['repeats']}  "
            f"compile {r['compile_s']:.2f} s  {r['gflops']:.1f} GFLOP/s", flush=True)
    timed = {k: v["ms"] for k, v in row["impls"].items() if "ms" in v and k not in ("auto", "direct")}
    if timed:
      row["best"] = min(timed, key=timed.get)
    results[name] = row

  stack = {}
  if not args.no_stack:
    for impl, reps in (("auto", args.repeats), ("direct", args.stack_direct_repeats)):
      stack[impl] = time_stack(impl, warmup=1, repeats=reps)
      print(f"stack {impl:8s} {stack[impl]['ms']:10.1f} ms  compile {stack[impl]['compile_s']:.2f} s  "
            f"loss {stack[impl]['loss']:.6f}", flush=True)

  print("\nlayer   direct ms     best form (ms)          auto (ms)   auto choice")
  for name, row in results.items():
    d = row["impls"].get("direct", {}).get("ms", float("nan"))
    best = row.get("best")
    bms = row["impls"][best]["ms"] if best else float("nan")
    a = row["impls"].get("auto", {}).get("ms", float("nan"))
    print(f"{name:5s} {d:11.1f}   {str(best):12s} {bms:9.1f}   {a:9.1f}   {'+'.join(row['auto_choice'])}")
  if not args.no_write:
    harness.write_results("conv_layers", {
        "description": "forward+backward (grad w.r.t. input and kernel) per conv layer of the benchmark VQ-VAE "
                       "(batch 4, hiddens 128, input 16x64x64x3, downsample (4,4,4)); M1/M2: stride (2,1,1).",
        "notes": "2 CPU cores shared with ~6 other engineers' jobs: absolute times are noisy (read ratios). "
                 "direct strided/transposed layers are timed with fewer repeats (see 'repeats').",
        "load_average_start_end": [load_start, os.getloadavg()],
        "layers": results, "stack": stack,
        "median_note": "ms = median over repeats after 1 warm-up call",
        "timestamp": time.time()})


if __name__ == "__main__":
  main()
