"""The paper's BAIR FVD protocol on a BAIR-format test split of 256 trajectories: `n_trials` x 256 clips draws new
samples for the SAME 256 real clips every trial, and the real clips' I3D logits are computed once (then cached).

Tiny random-weight VQ-VAE and frame-conditional prior (16x16 clips of 16 frames, 2x2x2 latents). I3D is replaced
by cheap per-frame colour statistics (the shipped network, or even the resize to 224x224 in front of a stand-in,
takes minutes per trial on CPU; `test_i3d.py` and `test_fvd.py` test it): this file tests the protocol, i.e. which
clips reach the feature extractor, how often, and with which conditioning.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videogpt_jax import sharding, visualize
from videogpt_jax.evaluation import base, fvd, suite
from videogpt_jax.evaluation.evaluators import fvd as fvd_eval
from videogpt_jax.evaluation.evaluators import fvd_star as fvd_star_eval
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models import vqvae as vqvae_lib

N_TEST = 256  # BAIR's test split
SEQ_LEN, RES = 16, 16


def _frame(traj: int, t: int) -> np.ndarray:
  """A bright square moving with the trajectory's own velocity over a dark frame (64x64, as BAIR)."""
  frame = np.full((64, 64, 3), 20, np.uint8)
  y, x = (traj * 7 + 3 * t) % 48, (traj * 13 + 2 * t * (1 + traj % 3)) % 48
  frame[y:y + 16, x:x + 16] = (40 + traj % 200, 200, 255 - traj % 200)
  return frame


def _write_bair(root, n_train: int, n_test: int):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for split, ids in (("train", range(n_train)), ("test", range(1000, 1000 + n_test))):
    (root / "softmotion30_44k" / split).mkdir(parents=True)
    with tf.io.TFRecordWriter(str(root / "softmotion30_44k" / split / "traj_0_to_x.tfrecords")) as w:
      for traj in ids:
        feature = {}
        for t in range(30):
          img = _frame(traj, t).tobytes()
          feature[f"{t}/image_aux1/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[img]))
          feature[f"{t}/image_main/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[img]))
          feature[f"{t}/action"] = tf.train.Feature(float_list=tf.train.FloatList(value=[0.0] * 4))
          feature[f"{t}/endeffector_pos"] = tf.train.Feature(float_list=tf.train.FloatList(value=[0.0] * 3))
        w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  return root


def _features(videos: np.ndarray) -> np.ndarray:
  """uint8 `(N, T, H, W, 3)` -> `(N, 2 T)` features: per-frame mean brightness and its spread, as I3D's logits."""
  x = np.asarray(videos, np.float64).mean(axis=-1)
  return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], axis=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("bair256")
  _write_bair(root / "manual", n_train=2, n_test=N_TEST)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"mesh": (-1, 1, 1), "num_devices": -1}))
  data_config = ml_collections.ConfigDict(dict(name="bair", data_dir=str(root / "tfds"),
                                               manual_dir=str(root / "manual"), builder_config="",
                                               eval_split="test", seq_len=SEQ_LEN, resolution=RES))
  data = suite.eval_data(data_config, mesh, batch_size=64)

  # Initialised under jit: op by op, the CPU formulations' many small ops take minutes on a loaded machine.
  vqvae = vqvae_lib.VQVAE(embedding_dim=4, n_codes=16, n_hiddens=8, n_res_layers=0, downsample=(8, 8, 8),
                          attention=False)
  vq_vars = jax.jit(lambda r0, r1: vqvae.init({"params": r0, "codebook": r1}, jnp.zeros((1, SEQ_LEN, RES, RES, 3)),
                                              train=False))(jax.random.key(0), jax.random.key(1))
  gpt = gpt_lib.GPT(shape=(2, 2, 2), n_codes=16, embedding_dim=4, hidden_dim=12, heads=2, layers=1,
                    n_cond_frames=1, frame_shape=(RES, RES), dropout=0.0, attn_dropout=0.0, cond_width=8,
                    cond_blocks=(1, 1, 1, 1))
  gpt_vars = jax.jit(lambda r: gpt.init({"params": r}, jnp.zeros((1, 2, 2, 2), jnp.int32),
                                        jnp.zeros((1, 1, RES, RES, 3)), None, deterministic=True))(jax.random.key(2))
  gpt_vars = {"params": gpt_vars["params"], "codebook": {"embeddings": vq_vars["codebook"]["embeddings"]}}
  with jax.set_mesh(mesh):
    real = base.first_clips(data, N_TEST + 1, 1)  # the whole split
  return {"data": data, "vqvae": (vqvae, vq_vars), "gpt": (gpt, gpt_vars), "mesh": mesh,
          "real": real}


@pytest.fixture
def spies(setup, monkeypatch):
  """Records the videos given to I3D (replaced by `_features`) and the conditioning given to the sampler."""
  seen = {"i3d": [], "cond": []}
  real_call = base.Sampler.__call__

  def i3d_logits(videos, module, variables, batch_size):
    assert module == "i3d" and batch_size == 64
    seen["i3d"].append(np.asarray(videos))
    return _features(videos)

  def sampler_call(self, rng, n, cond=None):
    seen["cond"].append(np.asarray(cond["frames"]))
    return real_call(self, rng, n, cond)

  monkeypatch.setattr(fvd, "i3d_logits", i3d_logits)
  monkeypatch.setattr(base.Sampler, "__call__", sampler_call)
  monkeypatch.setattr(fvd_eval, "i3d_for", lambda path, platform: ("i3d", None))
  return seen


@pytest.mark.slow
def test_bair_protocol_fixed_real_clips_new_samples_every_trial(setup, spies, tmp_path):
  real = setup["real"]
  assert real["video"].shape == (N_TEST, SEQ_LEN, RES, RES, 3)  # the split holds exactly the 256 trajectories
  evaluator = fvd_eval.Evaluator(n_trials=10, clips_per_trial=N_TEST, i3d_batch_size=64, cache_dir=str(tmp_path))
  with jax.set_mesh(setup["mesh"]):
    out = evaluator.run(setup["vqvae"], setup["gpt"], setup["data"], jax.random.key(0)).scalars

  # I3D saw the real set once, then each trial's 256 new samples.
  assert [v.shape[0] for v in spies["i3d"]] == [N_TEST] * 11
  np.testing.assert_array_equal(spies["i3d"][0], visualize.to_uint8(real["video"], truncate=True))
  samples = spies["i3d"][1:]
  assert all(not np.array_equal(samples[0], s) for s in samples[1:])  # new samples every trial
  # Every trial conditions sample i on the first frame of the same real clip i.
  assert len(spies["cond"]) == 10
  for cond in spies["cond"]:
    np.testing.assert_array_equal(cond, real["video"][:, :1])
  assert len(out["fvd_trials"]) == 10 and len(set(out["fvd_trials"])) == 10
  assert all(np.isfinite(out["fvd_trials"])) and min(out["fvd_trials"]) > 0
  assert out["fvd"] == pytest.approx(np.mean(out["fvd_trials"]))
  assert out["fvd_std"] == pytest.approx(np.std(out["fvd_trials"])) and out["fvd_std"] > 0
  assert out["n_trials"] == 10 and out["clips_per_trial"] == N_TEST and not out["real_features_cached"]
  assert len(list(tmp_path.glob("features_*.npz"))) == 1

  # A second run (same seed) reads the real set's logits from the cache: I3D only sees samples.
  spies["i3d"].clear()
  again = fvd_eval.Evaluator(n_trials=2, clips_per_trial=N_TEST, i3d_batch_size=64, cache_dir=str(tmp_path))
  with jax.set_mesh(setup["mesh"]):
    second = again.run(setup["vqvae"], setup["gpt"], setup["data"], jax.random.key(0)).scalars
  assert second["real_features_cached"] and len(spies["i3d"]) == 2
  assert second["fvd_trials"] == pytest.approx(out["fvd_trials"][:2], rel=1e-6)

  with pytest.raises(ValueError, match="clips_per_trial=257, but the split 'test' has 256 clips"):
    with jax.set_mesh(setup["mesh"]):
      fvd_eval.Evaluator(clips_per_trial=N_TEST + 1).run(setup["vqvae"], setup["gpt"], setup["data"],
                                                         jax.random.key(0))


@pytest.mark.slow
def test_fvd_star_compares_with_the_reconstructions_of_the_same_clips(setup, spies, tmp_path):
  evaluator = fvd_star_eval.Evaluator(n_trials=2, clips_per_trial=N_TEST, i3d_batch_size=64,
                                      cache_dir=str(tmp_path))
  with jax.set_mesh(setup["mesh"]):
    out = evaluator.run(setup["vqvae"], setup["gpt"], setup["data"], jax.random.key(0)).scalars
  vqvae, vq_vars = setup["vqvae"]
  recon = np.concatenate([np.asarray(base.reconstruct(vqvae, vq_vars, setup["real"]["video"][i:i + 64]))
                          for i in range(0, N_TEST, 64)])
  reference = visualize.to_uint8(np.clip(recon, -0.5, 0.5), truncate=True)
  assert np.mean(spies["i3d"][0] != reference) < 1e-3  # sharded vs unsharded float round-off at a few pixels
  assert len(spies["i3d"]) == 3 and set(out) >= {"fvd_star", "fvd_star_std", "fvd_star_trials"} and "fvd" not in out
  assert len(spies["cond"]) == 2 and np.array_equal(spies["cond"][0], setup["real"]["video"][:, :1])
