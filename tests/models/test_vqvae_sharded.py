"""A batch split over 8 (simulated CPU) devices gives the same codebook update and BatchNorm statistics."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.fixtures import rel_err
from videogpt_jax.models.vqvae import VQVAE


def test_sharded_train_forward_matches_unsharded():
  assert jax.device_count() >= 8, "tests/conftest.py should simulate 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  model = VQVAE(embedding_dim=4, n_codes=16, n_hiddens=8, n_res_layers=0, downsample=(2, 2, 2))
  video = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 8, 8, 3), minval=-0.5, maxval=0.5)
  variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), video[:1]))
  assert not bool(variables["codebook"]["initialized"])

  @jax.jit
  def step(variables, video, key):
    (recon, aux), updates = model.apply(variables, video, train=True, mutable=["batch_stats", "codebook"],
                                        rngs={"codebook": key})
    return recon, aux, {**variables, **updates}

  sharded_video = jax.device_put(video, NamedSharding(mesh, P("data")))
  replicated = jax.device_put(variables, NamedSharding(mesh, P()))
  ref_vars, sh_vars = variables, replicated
  # Step 1 initialises the codebook from (global) random batch vectors; step 2 is a plain EMA step + restarts.
  for i in range(2):
    key = jax.random.PRNGKey(10 + i)
    ref_recon, ref_aux, ref_vars = step(ref_vars, video, key)
    recon, aux, sh_vars = step(sh_vars, sharded_video, key)
    assert recon.sharding.spec[0] == "data"
    # Sums over the batch run in another order across devices: float rounding only.
    assert rel_err(recon, ref_recon) < 1e-5
    np.testing.assert_array_equal(np.asarray(aux["codes"]), np.asarray(ref_aux["codes"]))
    for k in ("loss", "commitment_loss", "perplexity"):
      np.testing.assert_allclose(float(aux[k]), float(ref_aux[k]), rtol=1e-5)
    for col in ("codebook", "batch_stats"):
      errs = jax.tree.map(rel_err, sh_vars[col], ref_vars[col])
      assert max(jax.tree.leaves(errs)) < 1e-5, errs
  assert bool(sh_vars["codebook"]["initialized"])
