"""Imports (and exports) the original PyTorch VideoGPT's VQ-VAE state dict as Flax variables.

`load_vqvae(state_dict, **args)` takes the original's keys (`encoder.convs.0.conv.weight`, ...) mapped to numpy
arrays (or torch tensors) and the original constructor arguments; `export_vqvae_state_dict` is the inverse.
`load_gpt` (the prior) lives in `torch_gpt.py` and is re-exported here.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.convert import layouts
from videogpt_jax.convert.torch_gpt import load_gpt  # noqa: F401  (re-exported: one import path for both)
from videogpt_jax.models.vqvae import VQVAE, stride_schedule

VQVAE_ARGS = ("embedding_dim", "n_codes", "n_hiddens", "n_res_layers", "downsample")
_AXES = ("w", "h", "t")


def _np(x: Any) -> np.ndarray:
  if hasattr(x, "detach"):  # torch.Tensor, without importing torch.
    x = x.detach().cpu().numpy()
  return np.asarray(x)


# One entry per converted tensor: (collection, Flax path, torch key, Flax -> torch fn, torch -> Flax fn).
# The conversion functions receive the tensor and return the converted one; shapes are checked separately.
Entry = tuple[str, tuple[str, ...], str, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _same(x: np.ndarray) -> np.ndarray:
  return np.array(x, copy=True)


def _qkv_in(w: np.ndarray, n_heads: int = 2) -> np.ndarray:
  """Linear `(n*d, C)` -> DenseGeneral `(C, n, d)`; the original's heads are head-major in the outputs."""
  k = layouts.linear(w)
  return k.reshape(k.shape[0], n_heads, -1)


def _qkv_out(k: np.ndarray) -> np.ndarray:
  return layouts.linear_to_torch(k.reshape(k.shape[0], -1))


def _fc_in(w: np.ndarray, n_heads: int = 2) -> np.ndarray:
  """Linear `(C, n*d)` -> DenseGeneral `(n, d, C)`."""
  k = layouts.linear(w)
  return k.reshape(n_heads, -1, k.shape[-1])


def _fc_out(k: np.ndarray) -> np.ndarray:
  return layouts.linear_to_torch(k.reshape(-1, k.shape[-1]))


def _conv(path, key, bias=True, transpose=False) -> list[Entry]:
  fwd, inv = ((layouts.conv_transpose3d, layouts.conv_transpose3d_to_torch) if transpose
              else (layouts.conv3d, layouts.conv3d_to_torch))
  out = [("params", path + ("kernel",), key + ".weight", inv, fwd)]
  if bias:
    out.append(("params", path + ("bias",), key + ".bias", _same, _same))
  return out


def _bn(path, key) -> list[Entry]:
  return [("params", path + ("scale",), key + ".weight", _same, _same),
          ("params", path + ("bias",), key + ".bias", _same, _same),
          ("batch_stats", path + ("mean",), key + ".running_mean", _same, _same),
          ("batch_stats", path + ("var",), key + ".running_var", _same, _same)]


def _res_block(path, key, attention) -> list[Entry]:
  # The original's nn.Sequential indices: 0 BN, 1 ReLU, 2 conv, 3 BN, 4 ReLU, 5 conv, 6 BN, 7 ReLU, 8 AxialBlock.
  out = (_bn(path + ("norm_0",), key + ".0") + _conv(path + ("conv_0",), key + ".2.conv", bias=False)
         + _bn(path + ("norm_1",), key + ".3") + _conv(path + ("conv_1",), key + ".5.conv", bias=False)
         + _bn(path + ("norm_2",), key + ".6"))
  if attention:
    for ax in _AXES:
      p, k = path + ("attn", f"attn_{ax}"), f"{key}.8.attn_{ax}"
      for proj in ("w_qs", "w_ks", "w_vs"):
        out.append(("params", p + (proj, "kernel"), f"{k}.{proj}.weight", _qkv_out, _qkv_in))
      out.append(("params", p + ("fc", "kernel"), f"{k}.fc.weight", _fc_out, _fc_in))
      out.append(("params", p + ("fc", "bias"), f"{k}.fc.bias", _same, _same))
  return out


def vqvae_entries(n_res_layers: int, n_down: int, attention: bool = True) -> list[Entry]:
  """The full Flax <-> torch mapping of a VQ-VAE with `n_down` strided convs (= transposed convs)."""
  out: list[Entry] = []
  for i in range(n_down):
    out += _conv(("encoder", f"convs_{i}"), f"encoder.convs.{i}.conv")
  out += _conv(("encoder", "conv_last"), "encoder.conv_last.conv")
  for part in ("encoder", "decoder"):
    for i in range(n_res_layers):
      out += _res_block((part, f"res_{i}"), f"{part}.res_stack.{i}.block", attention)
    out += _bn((part, "norm"), f"{part}.res_stack.{n_res_layers}")
  for i in range(n_down):
    out += _conv(("decoder", f"convts_{i}"), f"decoder.convts.{i}.convt", transpose=True)
  out += _conv(("pre_vq_conv",), "pre_vq_conv.conv") + _conv(("post_vq_conv",), "post_vq_conv.conv")
  for name in ("embeddings", "N", "z_avg"):
    out.append(("codebook", (name,), f"codebook.{name}", _same, _same))
  return out


def _select_vqvae(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The VQ-VAE's entries: the whole dict, or its `vqvae.` part (a VideoGPT prior's state dict)."""
  if "codebook.embeddings" in state_dict:
    return {k: _np(v) for k, v in state_dict.items()}
  if "vqvae.codebook.embeddings" in state_dict:
    return {k[len("vqvae."):]: _np(v) for k, v in state_dict.items() if k.startswith("vqvae.")}
  raise KeyError("state dict has neither 'codebook.embeddings' nor 'vqvae.codebook.embeddings': not an original "
                 "VideoGPT VQ-VAE (or VideoGPT) state dict")


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def vqvae_from_args(*, conv_impl: str = "auto", remat: bool = False, attention: bool = True,
                    **args: Any) -> VQVAE:
  """A `VQVAE` from the original's constructor arguments (unknown ones such as `resolution` are ignored)."""
  missing = [a for a in VQVAE_ARGS if a not in args]
  if missing:
    raise ValueError(f"VQ-VAE arguments {missing} are missing (got {sorted(args)})")
  return VQVAE(embedding_dim=int(args["embedding_dim"]), n_codes=int(args["n_codes"]),
               n_hiddens=int(args["n_hiddens"]), n_res_layers=int(args["n_res_layers"]),
               downsample=tuple(int(d) for d in args["downsample"]), conv_impl=conv_impl, attention=attention,
               remat=remat)


def abstract_variables(module: VQVAE) -> dict[str, Any]:
  """Shapes/dtypes of `module`'s variables (unboxed), without computing anything."""
  video = jax.ShapeDtypeStruct((1, *(2 ** len(stride_schedule(module.downsample)),) * 3, 3), jnp.float32)
  return nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), video))


def load_vqvae(state_dict: Mapping[str, Any], *, conv_impl: str = "auto", remat: bool = False,
               **vqvae_args: Any) -> tuple[VQVAE, dict[str, Any]]:
  """Original VQ-VAE state dict -> `(VQVAE module, variables)`.

  Args:
    state_dict: the original's `VQVAE.state_dict()` (or a `VideoGPT` one, whose `vqvae.*` part is used), numpy
      arrays or torch tensors.
    conv_impl, remat: passed to `VQVAE`.
    **vqvae_args: the original's constructor arguments `embedding_dim, n_codes, n_hiddens, n_res_layers,
      downsample`; others (`resolution`, `sequence_length`, ...) are ignored.
  Returns:
    The module and `{"params", "batch_stats", "codebook"}`; the codebook is marked initialised (unlike the
    original, which re-initialises it on its first training batch after loading).
  """
  sd = _select_vqvae(state_dict)
  n_res = int(vqvae_args.get("n_res_layers", 0))
  attention = n_res == 0 or any(".attn_w." in k for k in sd)
  module = vqvae_from_args(conv_impl=conv_impl, remat=remat, attention=attention,
                           **{k: vqvae_args[k] for k in VQVAE_ARGS if k in vqvae_args})
  entries = vqvae_entries(n_res, len(stride_schedule(module.downsample)), attention)
  expected = {e[2] for e in entries}
  present = {k for k in sd if not k.endswith(".num_batches_tracked")}
  if expected != present:
    raise KeyError(f"state dict does not match VQVAE({vqvae_args}): missing {sorted(expected - present)[:8]}, "
                   f"unexpected {sorted(present - expected)[:8]}")
  abstract = abstract_variables(module)
  variables: dict[str, Any] = {}
  problems = []
  for col, path, key, _, to_flax in entries:
    value = to_flax(np.asarray(sd[key], np.float32))
    want = _get(abstract[col], path).shape
    if value.shape != want:
      problems.append(f"{key}: {np.shape(sd[key])} -> {value.shape}, expected {want}")
    _set(variables.setdefault(col, {}), path, jnp.asarray(value))
  if problems:
    raise ValueError("state dict shapes do not match the VQ-VAE arguments:\n  " + "\n  ".join(problems))
  variables["codebook"]["initialized"] = jnp.array(True)
  return module, variables


def export_vqvae_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax VQ-VAE variables -> the original's state dict (numpy; `num_batches_tracked` written as 0)."""
  variables = nn.unbox(variables)
  params = variables["params"]
  n_res = sum(1 for k in params["encoder"] if k.startswith("res_"))
  n_down = sum(1 for k in params["encoder"] if k.startswith("convs_"))
  attention = n_res > 0 and "attn" in params["encoder"]["res_0"]
  sd = {}
  for col, path, key, to_torch, _ in vqvae_entries(n_res, n_down, attention):
    sd[key] = to_torch(np.asarray(_get(variables[col], path), np.float32))
    if key.endswith(".running_var"):
      sd[key[:-len("running_var")] + "num_batches_tracked"] = np.array(0, np.int64)
  return sd

