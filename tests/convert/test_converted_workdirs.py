"""A converted original checkpoint is a model directory like a training workdir: `inference` rebuilds it."""
from __future__ import annotations

import numpy as np
import pytest

from tests import fixtures
from videogpt_jax.convert.torch_videogpt import load_gpt
from videogpt_jax import inference
from videogpt_jax.models import conditioning

torch = pytest.importorskip("torch")


def _lightning(sd, args, path):
  torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
              "hyper_parameters": {"args": __import__("argparse").Namespace(**args)}}, path)


def test_load_vqvae_from_a_converted_directory(tmp_path):
  from videogpt_jax.convert.__main__ import convert
  z, meta = fixtures.load("vqvae_small.npz")
  sd, args = fixtures.state_dict(z), dict(meta["hparams"]["args"])
  _lightning(sd, args, tmp_path / "vqvae.ckpt")
  out = convert(tmp_path / "vqvae.ckpt", tmp_path / "vqvae", kind="vqvae")

  module, variables, config = inference.load_vqvae(out)
  assert config.kind == "vqvae" and config.data.resolution == 32 and config.model.n_codes == 64
  codes = module.apply(variables, fixtures.nthwc(z["x"]), method=type(module).encode_to_indices)
  np.testing.assert_array_equal(np.asarray(codes), z["codes"])
  with pytest.raises(Exception, match="converted vqvae, not a gpt"):
    inference.load_gpt(out)


def test_load_gpt_from_a_converted_directory(tmp_path):
  from videogpt_jax.convert.__main__ import convert
  vq_z, _ = fixtures.load("vqvae_small.npz")
  z, meta = fixtures.load("gpt_small_classcond.npz")
  sd = {**fixtures.state_dict(z), **fixtures.state_dict(vq_z, prefix="vqvae.")}
  args = {**meta["hparams"]["vqvae_args"], **meta["hparams"]["args"]}
  _lightning(sd, args, tmp_path / "gpt.ckpt")
  out = convert(tmp_path / "gpt.ckpt", tmp_path / "gpt", kind="gpt")

  module, variables, _ = inference.load_gpt(out)
  reference, ref_vars = load_gpt(sd, **args)
  assert module.class_cond_dim == reference.class_cond_dim == 5
  codes, labels = z["codes"].astype(np.int32), z["labels"].astype(np.int32)
  cond = conditioning.make_cond(label=labels)
  logits = module.apply(variables, codes, cond, deterministic=True)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(reference.apply(ref_vars, codes, cond)),
                             rtol=1e-6, atol=1e-6)
  assert fixtures.rel_err(logits, z["logits"]) < 1e-5
