"""VQ-VAE parity with the original PyTorch VideoGPT (`vqvae_small.npz`), plus shape/config checks and a tiny fit."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import fixtures
from tests.fixtures import nthwc, rel_err
from videogpt_jax.convert.torch_videogpt import export_vqvae_state_dict, load_vqvae
from videogpt_jax.models.axial_attention import AxialBlock
from videogpt_jax.models.vqvae import VQVAE, stride_schedule

TOL = 1e-5
TRAIN_STEPS = (("trainA", "x"), ("trainB", "trainB/x"), ("trainC", "trainC/x"))


@pytest.fixture(scope="module")
def ref():
  z, meta = fixtures.load("vqvae_small.npz")
  model, variables = load_vqvae(fixtures.state_dict(z), **meta["hparams"]["args"])
  return z, meta, model, variables


@pytest.fixture(scope="module")
def eval_out(ref):
  z, _, model, variables = ref
  fwd = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))
  (recon, aux), inter = fwd(variables, nthwc(z["x"]))
  return recon, aux, inter["intermediates"]


def _captured(tree, *path):
  for p in path:
    tree = tree[p]
  return tree["__call__"][0]


INTERMEDIATES = {
    "intermediate/enc_conv0_out": lambda i: _captured(i, "encoder", "convs_0"),
    "intermediate/enc_conv1_out": lambda i: _captured(i, "encoder", "convs_1"),
    "intermediate/enc_conv_last_out": lambda i: _captured(i, "encoder", "conv_last"),
    "intermediate/enc_res_block0_out": lambda i: _captured(i, "encoder", "res_0"),
    "intermediate/axial_block0_out": lambda i: _captured(i, "encoder", "res_0", "attn"),
    "encoder_out": lambda i: jax.nn.relu(_captured(i, "encoder", "norm")),
    "z": lambda i: _captured(i, "pre_vq_conv"),
    "intermediate/post_vq_conv_out": lambda i: _captured(i, "post_vq_conv"),
    "intermediate/dec_res_stack_out": lambda i: jax.nn.relu(_captured(i, "decoder", "norm")),
}


@pytest.mark.parametrize("name", sorted(INTERMEDIATES))
def test_eval_intermediates_match_original(ref, eval_out, name):
  z = ref[0]
  got = INTERMEDIATES[name](eval_out[2])
  assert got.shape == nthwc(z[name]).shape
  assert rel_err(got, nthwc(z[name])) < TOL


def test_eval_forward_matches_original(ref, eval_out):
  z = ref[0]
  recon, aux, _ = eval_out
  np.testing.assert_array_equal(np.asarray(aux["codes"]), z["codes"])
  assert aux["codes"].dtype == jnp.int32
  assert rel_err(recon, nthwc(z["x_recon"])) < TOL
  for k in ("recon_loss", "commitment_loss", "perplexity", "loss"):
    assert abs(float(aux[k]) / float(z[k]) - 1) < TOL, (k, float(aux[k]), float(z[k]))


def test_axial_block_matches_original(ref):
  z, _, _, variables = ref
  block_params = variables["params"]["encoder"]["res_0"]["attn"]
  out = jax.jit(AxialBlock(n_heads=2).apply)({"params": block_params}, nthwc(z["intermediate/axial_block0_in"]))
  assert rel_err(out, nthwc(z["intermediate/axial_block0_out"])) < TOL


def test_encode_decode_methods_match_original(ref):
  z, _, model, variables = ref
  codes = jax.jit(lambda v, x: model.apply(v, x, method=VQVAE.encode_to_indices))(variables, nthwc(z["x"]))
  assert codes.dtype == jnp.int32 and codes.shape == z["codes"].shape
  np.testing.assert_array_equal(np.asarray(codes), z["codes"])
  embedded = model.apply(variables, codes, method=VQVAE.embed_codes)
  # The original's straight-through output differs from the pure lookup by float rounding only.
  np.testing.assert_allclose(embedded, nthwc(z["embeddings_st"]), atol=1e-6)
  video = jax.jit(lambda v, c: model.apply(v, c, method=VQVAE.decode_from_indices))(variables, codes)
  assert rel_err(video, nthwc(z["x_decoded"])) < TOL


def _draws(z, step):
  """The original's recorded random draws of one training forward, in `quantizer.DRAW_KEYS` form."""
  perms = [z[f"{step}/randperm{i}_first_n_codes"].astype(np.int32) for i in range(2)
           if f"{step}/randperm{i}_first_n_codes" in z.files]
  # The init draw is only used when the codebook is uninitialised; passing the restart one otherwise keeps the
  # pytree (and so the compiled step) the same for every step.
  draws = {"init_indices": perms[0], "restart_indices": perms[-1]}
  if f"{step}/tile0_out" in z.files:
    assert not bool(z[f"{step}/need_init"])
    dim = z[f"{step}/z"].shape[1]
    flat = nthwc(z[f"{step}/z"]).reshape(-1, dim)
    reps = z[f"{step}/tile0_out"].shape[0] // flat.shape[0]
    draws["restart_noise"] = (z[f"{step}/tile0_out"] - np.tile(flat, (reps, 1))) / (0.01 / np.sqrt(dim))
    draws["init_noise"] = draws["restart_noise"]  # Unused (initialised), but the untaken branch is traced.
  return draws


@pytest.fixture(scope="module")
def train_chain(ref):
  """Runs trainA -> trainB -> trainC (state carried over, as in the fixture); returns per-step outputs."""
  z, _, model, variables = ref
  step = jax.jit(lambda v, x, d: model.apply(v, x, train=True, draws=d, mutable=["batch_stats", "codebook"]))
  out = {}
  for name, x_key in TRAIN_STEPS:
    codebook = dict(variables["codebook"], initialized=jnp.array(not bool(z[f"{name}/need_init"])))
    (recon, aux), updates = step({**variables, "codebook": codebook}, nthwc(z[x_key]), _draws(z, name))
    variables = {**variables, **updates}
    out[name] = (recon, aux, variables)
  return out


@pytest.mark.parametrize("name", [s for s, _ in TRAIN_STEPS])
def test_train_forward_matches_original(ref, train_chain, name):
  z = ref[0]
  recon, aux, variables = train_chain[name]
  np.testing.assert_array_equal(np.asarray(aux["codes"]), z[f"{name}/codes"])
  assert rel_err(recon, nthwc(z[f"{name}/x_recon"])) < TOL
  for k in ("recon_loss", "commitment_loss", "perplexity", "loss"):
    assert abs(float(aux[k]) / float(z[f"{name}/{k}"]) - 1) < TOL, (k, float(aux[k]), float(z[f"{name}/{k}"]))
  assert bool(variables["codebook"]["initialized"])


@pytest.mark.parametrize("name", [s for s, _ in TRAIN_STEPS])
def test_train_state_updates_match_original(ref, train_chain, name):
  """Codebook EMA + init + dead-code restarts and BatchNorm running statistics after each training forward."""
  z, meta, _, _ = ref
  variables = train_chain[name][2]
  sd = export_vqvae_state_dict(variables)
  keys = [k for k in meta["train_steps"][name]["sd_after_keys"] if not k.endswith("num_batches_tracked")]
  assert len(keys) == 2 * 14 + 3  # 14 BatchNorms (mean, var) + the 3 codebook buffers.
  for k in keys:
    assert rel_err(sd[k], z[f"{name}/sd_after/{k}"]) < TOL, k
  counts = variables["codebook"]["N"]
  np.testing.assert_allclose(counts, z[f"{name}/sd_after/codebook.N"], rtol=1e-6)
  # Which codes survived (N >= 1) vs were restarted must match exactly.
  np.testing.assert_array_equal(np.asarray(counts >= 1, np.float32), z[f"{name}/usage_after"])
  if name == "trainC":
    assert z["trainC/usage_after"].min() == 0  # This step exercises the random restarts.


def test_latent_shape_and_stride_schedule():
  model = VQVAE(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=(4, 2, 2))
  assert stride_schedule((4, 2, 2)) == [(2, 2, 2), (2, 1, 1)]
  assert stride_schedule((1, 4, 4)) == [(1, 2, 2), (1, 2, 2)]
  assert model.latent_shape((16, 64, 64)) == (4, 32, 32)
  assert model.latent_shape((2, 16, 64, 64, 3)) == (4, 32, 32)
  with pytest.raises(ValueError, match="not divisible"):
    model.latent_shape((6, 64, 64))
  with pytest.raises(ValueError, match="downsample"):
    VQVAE(4, 8, 8, 1, (3, 2, 2)).latent_shape((12, 8, 8))


def test_rejects_bad_video_shape():
  model = VQVAE(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=0, downsample=(2, 2, 2))
  with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 4, 1)))


def test_variables_are_annotated_and_attention_is_optional():
  video = jax.ShapeDtypeStruct((1, 4, 8, 8, 3), jnp.float32)
  with_attn = jax.eval_shape(VQVAE(4, 8, 8, 1, (2, 2, 2)).init, jax.random.PRNGKey(0), video)
  spec = nn.get_partition_spec(with_attn)
  assert spec["params"]["encoder"]["convs_0"]["kernel"] == jax.sharding.PartitionSpec(
      "conv_k", "conv_k", "conv_k", "conv_in", "conv_out")
  assert spec["params"]["encoder"]["res_0"]["attn"]["attn_w"]["w_qs"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "heads", "kv")
  assert spec["codebook"]["embeddings"] == jax.sharding.PartitionSpec("codebook", None)
  no_attn = nn.unbox(jax.eval_shape(VQVAE(4, 8, 8, 1, (2, 2, 2), attention=False).init, jax.random.PRNGKey(0),
                                    video))
  assert "attn" not in no_attn["params"]["encoder"]["res_0"]
  assert set(no_attn["codebook"]) == {"embeddings", "N", "z_avg", "initialized"}


TINY = dict(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=1, downsample=(2, 4, 4))


def _tiny_videos(n=2, t=8, size=16):
  """Smooth moving blobs in [-0.5, 0.5]: learnable structure for a tiny fit."""
  tt, yy, xx = np.meshgrid(np.arange(t), np.arange(size), np.arange(size), indexing="ij")
  vids = []
  for i in range(n):
    cy, cx = 4 + i * 3 + 0.5 * tt, 5 + 0.7 * tt
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
    vids.append(np.stack([blob, 1 - blob, 0.5 * blob], -1) - 0.5)
  return jnp.asarray(np.stack(vids), jnp.float32)


def _train_loss(model):
  def loss_fn(params, state, video, key):
    (_, aux), new_state = model.apply({"params": params, **state}, video, train=True,
                                      mutable=["batch_stats", "codebook"], rngs={"codebook": key})
    return aux["loss"], (aux, new_state)
  return loss_fn


def _split(variables):
  variables = nn.unbox(variables)
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


@pytest.mark.slow
def test_remat_gives_same_gradients():
  # Random video: no duplicate latent vectors, so no near-tied codes that float rounding could flip.
  video = jax.random.uniform(jax.random.PRNGKey(2), (2, 4, 16, 16, 3), minval=-0.5, maxval=0.5)
  params, state = _split(jax.jit(VQVAE(**TINY).init)(jax.random.PRNGKey(0), video))
  key = jax.random.PRNGKey(1)
  grads = [jax.jit(jax.grad(_train_loss(VQVAE(**TINY, remat=r)), has_aux=True))(params, state, video, key)[0]
           for r in (False, True)]
  assert max(jax.tree.leaves(jax.tree.map(rel_err, grads[1], grads[0]))) < 1e-4


@pytest.mark.slow
def test_tiny_vqvae_trains():
  video = _tiny_videos()
  model = VQVAE(**TINY)
  params, state = _split(jax.jit(model.init)(jax.random.PRNGKey(0), video))
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)
  loss_fn = _train_loss(model)

  @jax.jit
  def train_step(params, opt_state, state, key):
    (_, (aux, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, video, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_state, aux["recon_loss"]

  losses = []
  for i in range(40):
    params, opt_state, state, recon_loss = train_step(params, opt_state, state, jax.random.PRNGKey(i))
    losses.append(float(recon_loss))
  assert bool(state["codebook"]["initialized"])
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
