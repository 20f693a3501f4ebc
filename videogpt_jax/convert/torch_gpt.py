"""Imports the original VideoGPT prior (PyTorch state dict + constructor args) as a Flax `GPT` and its variables.

The original's state dict holds the whole VQ-VAE under `vqvae.`; only `vqvae.codebook.embeddings` is used here
(the prior's frozen token embeddings). Buffers of the original's causal masks (`...attn.attn.mask`) are ignored:
the mask is a function of `attn_type` here. Every other entry must map onto a parameter of the same shape, and
every parameter must be covered, or a ValueError lists what does not match.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.convert import layouts
from videogpt_jax.models import conditioning
from videogpt_jax.models.gpt import GPT

_REQUIRED = ("hidden_dim", "heads", "layers", "attn_type", "n_cond_frames")


def _np(x: Any) -> np.ndarray:
  if hasattr(x, "detach"):  # a torch tensor
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def _shape_of(state_dict: Mapping[str, Any] | None, key: str) -> tuple[int, ...] | None:
  if state_dict is None or key not in state_dict:
    return None
  return tuple(int(d) for d in _np(state_dict[key]).shape)


def _agree(name: str, from_args: Any, from_weights: Any) -> Any:
  """The value of a size given both by the args and by the weights' shapes; they must agree."""
  if from_args is None or from_weights is None:
    return from_weights if from_args is None else from_args
  if tuple(np.atleast_1d(from_args)) != tuple(np.atleast_1d(from_weights)):
    raise ValueError(f"load_gpt: {name} from the args is {from_args}, but the weights have {from_weights}")
  return from_args


def gpt_from_args(state_dict: Mapping[str, Any] | None = None, *, dtype: Any = jnp.float32, remat: bool = False,
                  **args: Any) -> GPT:
  """Builds the `GPT` of the original's constructor args.

  Sizes that the VQ-VAE defines (`embedding_dim, n_codes`, and the latent shape from `downsample, resolution,
  sequence_length`) are read from the args when given, and otherwise from the shapes in `state_dict` (the codebook
  and the position-embedding tables); when both are there they must agree. So the hyperparameters stored in an
  original Lightning checkpoint, which name the VQ-VAE only by path, are enough. Other entries of the original's
  argparse namespace (batch size, data path, ...) are accepted and ignored. The original's sparse attention
  ignores `attn_dropout` (its DeepSpeed kernel has none), so a sparse prior is imported with `attn_dropout=0`,
  which is what it was trained with.
  """
  missing = [k for k in _REQUIRED if k not in args]
  if missing:
    raise ValueError(f"load_gpt: missing constructor args {missing}")
  n_cond = int(args["n_cond_frames"])
  shape = None
  if all(args.get(k) is not None for k in ("downsample", "resolution", "sequence_length")):
    ds = tuple(int(d) for d in args["downsample"])
    res, seq = int(args["resolution"]), int(args["sequence_length"])
    if len(ds) != 3 or seq % ds[0] or res % ds[1] or res % ds[2]:
      raise ValueError(f"load_gpt: downsample={ds} must have 3 entries dividing sequence_length={seq} and "
                       f"resolution={res}")
    shape = (seq // ds[0], res // ds[1], res // ds[2])
  tables = [_shape_of(state_dict, f"attn_stack.pos_embd.emb.d_{i}") for i in range(3)]
  shape = _agree("latent shape (sequence_length, resolution) / downsample", shape,
                 tuple(t[0] for t in tables) if all(tables) else None)
  codebook = _shape_of(state_dict, "vqvae.codebook.embeddings")
  n_codes = _agree("n_codes", args.get("n_codes"), codebook and codebook[0])
  embedding_dim = _agree("embedding_dim", args.get("embedding_dim"), codebook and codebook[1])
  frame_shape = None
  if n_cond:
    cond_tables = [_shape_of(state_dict, f"cond_pos_embd.emb.d_{i}") for i in (1, 2)]
    res = args.get("resolution")
    frame_shape = _agree("frame resolution", None if res is None else (int(res), int(res)),
                         tuple(4 * t[0] for t in cond_tables) if all(cond_tables) else None)
  class_cond = bool(args.get("class_cond", False))
  class_cond_dim = None
  if class_cond:
    w = _shape_of(state_dict, "norm.w.weight")
    class_cond_dim = _agree("class_cond_dim", args.get("class_cond_dim"), w and w[1])
  unknown = [name for name, v in (("latent shape (downsample, resolution, sequence_length)", shape),
                                  ("n_codes", n_codes), ("embedding_dim", embedding_dim),
                                  ("resolution", frame_shape if n_cond else 0),
                                  ("class_cond_dim", class_cond_dim if class_cond else 0)) if v is None]
  if unknown:
    raise ValueError(f"load_gpt: cannot tell {unknown} from the args or the state dict")
  return GPT(
      shape=tuple(int(s) for s in shape),
      n_codes=int(n_codes),
      embedding_dim=int(embedding_dim),
      hidden_dim=int(args["hidden_dim"]),
      heads=int(args["heads"]),
      layers=int(args["layers"]),
      attn_type=str(args["attn_type"]),
      n_cond_frames=n_cond,
      frame_shape=tuple(int(s) for s in frame_shape) if n_cond else None,
      class_cond_dim=int(class_cond_dim) if class_cond else None,
      dropout=float(args.get("dropout", 0.2)),
      attn_dropout=0.0 if args["attn_type"] == "sparse" else float(args.get("attn_dropout", 0.3)),
      dtype=dtype,
      remat=remat,
  )


_LN = {"weight": "scale", "bias": "bias"}
_NORMS = {"bnr1": "norm1", "bnr2": "norm2", "proj_bnr": "proj_norm"}


def _resnet_path(key: str) -> tuple[str, ...] | None:
  """Original key below `resnet.` -> path below params/resnet, or None if it is not a known ResNet key."""
  if key == "stem.0.weight":
    return ("stem_conv", "kernel")
  m = re.fullmatch(r"stem\.1\.norm\.norm\.(weight|bias)", key)
  if m:
    return ("stem_norm", "norm", _LN[m.group(1)])
  m = re.fullmatch(r"(group\d)\.(start_block|blocks\.\d+)\.(.+)", key)
  if not m:
    return None
  group, block, rest = m.group(1), m.group(2).replace("blocks.", "blocks_"), m.group(3)
  m = re.fullmatch(r"(proj_conv|conv1|conv2)\.weight", rest)
  if m:
    return (group, block, m.group(1), "kernel")
  m = re.fullmatch(r"(proj_bnr|bnr1|bnr2)\.norm\.norm\.(weight|bias)", rest)
  if m:
    return (group, block, _NORMS[m.group(1)], "norm", _LN[m.group(2)])
  return None


def _norm_entries(prefix: tuple[str, ...], sub: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  if sub in ("g", "b"):
    return prefix + (sub,), value
  return prefix + ({"w.weight": "w", "wb.weight": "wb"}[sub],), layouts.linear(value)


def _convert_key(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  """Original key -> (path in params, Flax-layout array); None for keys that carry no parameter."""
  if key.startswith("vqvae.") or key.endswith(".attn.attn.mask"):
    return None
  if key == "fc_in.weight":
    return ("fc_in", "kernel"), layouts.linear(value)
  if key == "fc_out.weight":
    return ("fc_out", "kernel"), layouts.linear(value)
  if key == "attn_stack.right_shift.sos":
    return ("sos",), value
  m = re.fullmatch(r"(attn_stack\.pos_embd|cond_pos_embd)\.emb\.(d_\d)", key)
  if m:
    return ("pos_embd" if m.group(1) == "attn_stack.pos_embd" else "cond_pos_embd", m.group(2)), value
  m = re.fullmatch(r"norm\.(g|b|w\.weight|wb\.weight)", key)
  if m:
    return _norm_entries(("norm",), m.group(1), value)
  if key.startswith("resnet."):
    path = _resnet_path(key[len("resnet."):])
    if path is None:
      raise ValueError(f"load_gpt: unknown frame-encoder key {key!r}")
    return ("resnet",) + path, layouts.conv3d(value) if path[-1] == "kernel" else value
  m = re.fullmatch(r"attn_stack\.attn_nets\.(\d+)\.(.+)", key)
  if not m:
    raise ValueError(f"load_gpt: unknown state dict key {key!r}")
  block, rest = (f"blocks_{m.group(1)}",), m.group(2)
  m = re.fullmatch(r"(pre_attn_norm|pre_enc_norm|pre_fc_norm)\.(g|b|w\.weight|wb\.weight)", rest)
  if m:
    return _norm_entries(block + (m.group(1),), m.group(2), value)
  m = re.fullmatch(r"(attn|enc_attn)\.(w_qs|w_ks|w_vs|fc)\.(weight|bias)", rest)
  if m:
    layer, kind = block + (m.group(1), m.group(2)), m.group(3)
    return (layer + ("kernel",), layouts.linear(value)) if kind == "weight" else (layer + ("bias",), value)
  m = re.fullmatch(r"fc_block\.(0|2)\.(weight|bias)", rest)
  if m:
    layer = block + ({"0": "fc1", "2": "fc2"}[m.group(1)],)
    kind = m.group(2)
    return (layer + ("kernel",), layouts.linear(value)) if kind == "weight" else (layer + ("bias",), value)
  raise ValueError(f"load_gpt: unknown state dict key {key!r}")


def _example_inputs(module: GPT) -> dict[str, Any]:
  frames = (jnp.zeros((1, module.n_cond_frames, *module.frame_shape, 3), jnp.float32) if module.n_cond_frames
            else None)
  label = jnp.zeros((1,), jnp.int32) if module.class_cond_dim is not None else None
  return {"codes": jnp.zeros((1, *module.shape), jnp.int32), "cond": conditioning.make_cond(frames, label)}


def abstract_variables(module: GPT) -> dict[str, Any]:
  """Unboxed shapes/dtypes of the module's variables (`jax.ShapeDtypeStruct` leaves), without computing them."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), **_example_inputs(module)))
  return nn.meta.unbox(shapes)


def load_gpt(state_dict: Mapping[str, Any], *, dtype: Any = jnp.float32, remat: bool = False,
             **gpt_args: Any) -> tuple[GPT, dict[str, Any]]:
  """Imports the original VideoGPT prior.

  Args:
    state_dict: the original `VideoGPT.state_dict()` (numpy arrays or torch tensors), including `vqvae.*`.
    dtype: compute dtype of the returned module (parameters are float32).
    remat: rematerialise blocks in the backward pass.
    **gpt_args: the original's constructor args `hidden_dim, heads, layers, attn_type, n_cond_frames, class_cond,
      class_cond_dim, dropout, attn_dropout, resolution, sequence_length` and the VQ-VAE's `embedding_dim,
      n_codes, downsample` (the VQ-VAE's sizes may be left out: see `gpt_from_args`; others, e.g. `n_hiddens`,
      are ignored).

  Returns:
    `(module, variables)` with `variables = {"params": ..., "codebook": {"embeddings": (K, D)}}` (plain arrays).
  """
  if "vqvae.codebook.embeddings" not in state_dict:
    raise ValueError("load_gpt: the state dict has no 'vqvae.codebook.embeddings' (the original prior's state "
                     "dict contains its VQ-VAE under 'vqvae.')")
  module = gpt_from_args(state_dict, dtype=dtype, remat=remat, **gpt_args)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  for key, value in state_dict.items():
    converted = _convert_key(key, _np(value))
    if converted is not None:
      flat[converted[0]] = converted[1]

  abstract = abstract_variables(module)
  expected = {tuple(getattr(p, "key", None) for p in path): leaf
              for path, leaf in jax.tree_util.tree_flatten_with_path(abstract["params"])[0]}
  problems = [f"missing in state dict: {'/'.join(p)}" for p in expected if p not in flat]
  problems += [f"no such parameter for this config: {'/'.join(p)}" for p in flat if p not in expected]
  problems += [f"{'/'.join(p)}: state dict shape {flat[p].shape} != expected {tuple(expected[p].shape)}"
               for p in expected if p in flat and flat[p].shape != tuple(expected[p].shape)]
  codebook = np.asarray(_np(state_dict["vqvae.codebook.embeddings"]), np.float32)
  want = tuple(abstract["codebook"]["embeddings"].shape)
  if codebook.shape != want:
    problems.append(f"vqvae.codebook.embeddings: shape {codebook.shape} != (n_codes, embedding_dim) {want}")
  if problems:
    raise ValueError("load_gpt: state dict does not match the GPT config:\n  " + "\n  ".join(problems))

  params: dict[str, Any] = {}
  for path, value in flat.items():
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = jnp.asarray(value, jnp.float32)
  return module, {"params": params, "codebook": {"embeddings": jnp.asarray(codebook)}}
