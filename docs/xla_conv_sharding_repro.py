"""XLA SPMD gives a wrong gradient for two chained layers on a 2x2x2 mesh (jax 0.10.2, XLA:CPU).

Standalone (only jax and numpy). Run: `python docs/xla_conv_sharding_repro.py` (it simulates 8 CPU devices).

The function: `mean(conv(relu(conv(x, w1, stride 2)), w2, stride 2) ** 2)`, 3-D convolutions, NDHWC / DHWIO.
On a `(data=2, fsdp=2, model=2)` mesh with
  x  (8, 4, 8, 8, 3)   batch over ('data', 'fsdp'),
  w1 (4, 4, 4, 3, 8)   output channels over 'model',
  w2 (4, 4, 4, 8, 8)   input channels over 'fsdp' (an axis that also splits the batch), output over 'model',
`jax.grad` with respect to w1 differs from the unsharded gradient by ~57% (max abs error / max abs value), while
w2's gradient and the loss agree. The same layout with two matmuls in place of the convolutions is wrong too.
Each control below changes one thing and agrees to ~1e-7: the fault needs w2's contracted dimension split over
an axis that also splits the batch while the activation entering it is split over another axis on that dimension.

Output (`docs/xla_conv_sharding_repro.txt` holds one): one line per case `<case>: loss <rel err> dw1 <rel err>
dw2 <rel err>`, then `FAULT PRESENT` if a "faulty" case is wrong, `FAULT ABSENT` if none is, and `CONTROL FAILED`
if a control is wrong (exit code 0 in every case).
"""
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

BATCH = ("data", "fsdp")
TOLERANCE = 1e-4


def conv(x, w, stride):
  return lax.conv_general_dilated(x, w, (stride,) * 3, [(1, 1)] * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def loss(w1, w2, x):
  return jnp.mean(conv(jax.nn.relu(conv(x, w1, 2)), w2, 2) ** 2)


def dense_loss(w1, w2, x):
  """The same layout with matmuls in place of the convolutions (the kernels' centre taps)."""
  return jnp.mean((jax.nn.relu(x.reshape(8, -1)[:, :3] @ w1[0, 0, 0]) @ w2[0, 0, 0]) ** 2)


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


def main():
  print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} devices")
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "model"), axis_types=(AxisType.Auto,) * 3)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (8, 4, 8, 8, 3))
  w1 = 0.1 * jax.random.normal(k2, (4, 4, 4, 3, 8))
  w2 = 0.1 * jax.random.normal(k3, (4, 4, 4, 8, 8))
  out_model, in_fsdp_out_model = P(None, None, None, None, "model"), P(None, None, None, "fsdp", "model")
  cases = {
      # name: (loss function, w1 spec, w2 spec)
      "faulty: w1 out/model, w2 in/fsdp out/model": (loss, out_model, in_fsdp_out_model),
      "faulty: the same with dense layers": (dense_loss, out_model, in_fsdp_out_model),
      "control: w1 replicated": (loss, P(), in_fsdp_out_model),
      "control: w2 in/fsdp only": (loss, out_model, P(None, None, None, "fsdp")),
      "control: w2 in/model out/fsdp": (loss, P(None, None, None, None, "fsdp"), P(None, None, None, "model", "fsdp")),
      "control: kernels out/(model,fsdp), in replicated": (
          loss, P(None, None, None, None, ("model", "fsdp")), P(None, None, None, None, ("model", "fsdp"))),
  }
  faulty = control_failed = False
  for name, (fn, s1, s2) in cases.items():
    grad = jax.value_and_grad(fn, argnums=(0, 1))
    want_loss, (want1, want2) = jax.jit(grad)(w1, w2, x)
    shardings = tuple(NamedSharding(mesh, s) for s in (s1, s2, P(BATCH)))
    args = [jax.device_put(a, s) for a, s in zip((w1, w2, x), shardings)]
    got_loss, (got1, got2) = jax.jit(grad, in_shardings=shardings)(*args)
    errs = rel_err(got_loss, want_loss), rel_err(got1, want1), rel_err(got2, want2)
    print(f"{name}: loss {errs[0]:.1e} dw1 {errs[1]:.1e} dw2 {errs[2]:.1e}", flush=True)
    if max(errs) > TOLERANCE:
      faulty |= name.startswith("faulty")
      control_failed |= name.startswith("control")
  print("FAULT PRESENT" if faulty else "FAULT ABSENT")
  if control_failed:
    print("CONTROL FAILED")


if __name__ == "__main__":
  main()
