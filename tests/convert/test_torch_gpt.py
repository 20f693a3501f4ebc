"""Importing the original VideoGPT prior: config from args and weights, key coverage, clear errors."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import fixtures
from videogpt_jax.convert import torch_gpt


@functools.lru_cache(maxsize=None)
def _original(variant: str):
  return fixtures.original_gpt(variant)


def _sd(variant: str) -> tuple[dict, dict]:
  _, sd, args = _original(variant)
  return dict(sd), dict(args)


@pytest.mark.parametrize("variant", ["uncond", "framecond", "classcond"])
def test_config_and_parameter_coverage(variant):
  sd, args = _sd(variant)
  module, variables = torch_gpt.load_gpt(sd, **args)
  assert module.shape == (4, 8, 8) and module.n_codes == 64 and module.embedding_dim == 16
  assert (module.hidden_dim, module.heads, module.layers, module.attn_type) == (48, 4, 2, "full")
  assert module.n_cond_frames == (1 if variant == "framecond" else 0)
  assert module.frame_shape == ((32, 32) if variant == "framecond" else None)
  assert module.class_cond_dim == (5 if variant == "classcond" else None)
  # Every non-VQ-VAE, non-mask entry became exactly one parameter, value-preserving (up to layout).
  used = [k for k in sd if not k.startswith("vqvae.") and not k.endswith(".attn.attn.mask")]
  assert len(jax.tree.leaves(variables["params"])) == len(used)
  total = sum(float(np.abs(np.asarray(x, np.float64)).sum()) for x in jax.tree.leaves(variables["params"]))
  assert total == pytest.approx(sum(float(np.abs(sd[k].astype(np.float64)).sum()) for k in used), rel=1e-9)
  np.testing.assert_array_equal(variables["codebook"]["embeddings"], sd["vqvae.codebook.embeddings"])
  np.testing.assert_array_equal(variables["params"]["fc_in"]["kernel"], sd["fc_in.weight"].T)
  np.testing.assert_array_equal(variables["params"]["blocks_1"]["attn"]["w_vs"]["kernel"],
                                sd["attn_stack.attn_nets.1.attn.w_vs.weight"].T)


def test_vqvae_sizes_are_read_from_the_weights():
  """An original Lightning checkpoint names its VQ-VAE by path: the sizes come from the state dict then."""
  sd, args = _sd("framecond")
  for k in ("embedding_dim", "n_codes", "downsample", "n_hiddens", "n_res_layers", "resolution",
            "sequence_length"):
    args.pop(k)
  args.update(vqvae="bair_stride4x2x2", batch_size=32, gpus=1)  # unrelated training args are ignored
  module, _ = torch_gpt.load_gpt(sd, **args)
  assert (module.shape, module.n_codes, module.embedding_dim, module.frame_shape) == ((4, 8, 8), 64, 16, (32, 32))


def test_released_sparse_config_uses_the_same_weights():
  sd, args = _sd("uncond")
  z, _, _ = _original("uncond")
  full, variables = torch_gpt.load_gpt(sd, **args)
  sparse, sparse_vars = torch_gpt.load_gpt(sd, **{**args, "attn_type": "sparse"})
  assert sparse.attn_type == "sparse" and (sparse.sparse_block, sparse.sparse_local_blocks) == (32, 4)
  # The original's sparse kernel has no attention dropout, whatever its args say; full attention keeps it.
  assert sparse.attn_dropout == 0.0 and full.attn_dropout == float(args.get("attn_dropout", 0.3)) > 0
  jax.tree.map(np.testing.assert_array_equal, variables, sparse_vars)
  run = jax.jit(lambda v, c: (full.apply(v, c), sparse.apply(v, c)))
  a, b = run(variables, jnp.asarray(z["codes"], jnp.int32))
  assert np.isfinite(np.asarray(b)).all()
  # 256 tokens = 8 blocks of 32: the first 5 blocks (160 tokens) see all their past in both patterns.
  np.testing.assert_allclose(np.asarray(b).reshape(2, 256, -1)[:, :160], np.asarray(a).reshape(2, 256, -1)[:, :160],
                             rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def test_accepts_torch_tensors():
  torch = pytest.importorskip("torch")
  sd, args = _sd("classcond")
  module, variables = torch_gpt.load_gpt({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, **args)
  _, ref = torch_gpt.load_gpt(sd, **args)
  jax.tree.map(np.testing.assert_array_equal, variables, ref)


def test_mismatches_raise_clear_errors():
  sd, args = _sd("uncond")
  with pytest.raises(ValueError, match="missing constructor args"):
    torch_gpt.load_gpt(sd, **{k: v for k, v in args.items() if k != "heads"})
  bad = dict(sd)
  del bad["attn_stack.attn_nets.1.fc_block.0.bias"]
  with pytest.raises(ValueError, match="missing in state dict: blocks_1/fc1/bias"):
    torch_gpt.load_gpt(bad, **args)
  bad = {**sd, "attn_stack.attn_nets.0.pre_enc_norm.g": np.ones(48, np.float32)}
  with pytest.raises(ValueError, match="no such parameter for this config: blocks_0/pre_enc_norm/g"):
    torch_gpt.load_gpt(bad, **args)
  bad = {**sd, "attn_stack.attn_nets.0.attn.fc.bias": np.ones(47, np.float32)}
  with pytest.raises(ValueError, match=r"blocks_0/attn/fc/bias: state dict shape \(47,\)"):
    torch_gpt.load_gpt(bad, **args)
  with pytest.raises(ValueError, match="unknown state dict key"):
    torch_gpt.load_gpt({**sd, "attn_stack.something_new.weight": np.ones(3)}, **args)
  with pytest.raises(ValueError, match="vqvae.codebook.embeddings"):
    torch_gpt.load_gpt({k: v for k, v in sd.items() if not k.startswith("vqvae.")}, **args)
  with pytest.raises(ValueError, match="n_codes from the args is 32"):
    torch_gpt.load_gpt(sd, **{**args, "n_codes": 32})
  with pytest.raises(ValueError, match="latent shape"):
    torch_gpt.load_gpt(sd, **{**args, "downsample": [4, 4, 4]})


def test_reexported_from_torch_videogpt():
  from videogpt_jax.convert import torch_videogpt
  assert torch_videogpt.load_gpt is torch_gpt.load_gpt
