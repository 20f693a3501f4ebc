"""`config.data.pp_train` / `pp_eval` reach the input pipelines (trainers and evaluation), and a bad op string is
one error naming the config field."""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from experiments.configs import vqvae_moving_mnist
from videogpt_jax import sharding
from videogpt_jax.evaluation import suite
from videogpt_jax.train import inputs


def _config(**data):
  config = vqvae_moving_mnist.get_config("runlocal")
  config.batch_size = 8
  config.mesh = (8, 1, 1)
  config.data.update(dict(builder_config="tiny", seq_len=4, resolution=16, **data))
  return config


def _mesh(config):
  return sharding.make_mesh(config, jax.devices()[:8])


def test_default_specs_are_the_pipelines_defaults(mnist_builder):
  config = _config()
  batch = next(iter(inputs.make_train_iterator(config, _mesh(config), mnist_builder)))
  assert batch["video"].shape == (8, 4, 16, 16, 3)


def test_pp_train_and_pp_eval_replace_the_default(mnist_builder):
  # The op strings ask for 8x8 frames and a 3-frame window while the config's fields say 16x16 and 4 frames: the
  # batches must follow the op strings.
  config = _config(pp_train="random_window(3)|decode_video|resize_smaller(8)|center_crop(8)|gray_to_rgb|"
                            "value_range(-0.5,0.5)",
                   pp_eval="fixed_window(3)|decode_video|resize_smaller(8)|center_crop(8)|gray_to_rgb|"
                           "value_range(0,1)")
  mesh = _mesh(config)
  train = next(iter(inputs.make_train_iterator(config, mesh, mnist_builder)))
  assert train["video"].shape == (8, 3, 8, 8, 3)
  assert float(np.min(train["video"])) < 0.0
  evaluation = next(iter(inputs.make_eval_iterator(config, mesh, mnist_builder)))
  assert evaluation["video"].shape[1:] == (3, 8, 8, 3)
  assert float(np.min(sharding.to_host(evaluation["video"]))) >= 0.0  # value_range(0, 1): the eval spec's own
  data = suite.eval_data(config.data, mesh, batch_size=8, builder=mnist_builder)
  first = next(iter(data.batches(0)))
  assert first["video"].shape[1:] == (3, 8, 8, 3)


@pytest.mark.parametrize("field,spec,n_cond,message", [
    ("pp_train", "random_window(4)|no_such_op", 0, "config.data.pp_train: Unknown preprocess op 'no_such_op'"),
    ("pp_eval", "fixed_window(4)|resize_smaller(", 0, "config.data.pp_eval: Bad preprocess op"),
    ("pp_train", "random_window(4)|decode_video|gray_to_rgb", 1, "needs the op string to end with |cond_frames(1)"),
])
def test_bad_spec_names_the_field(mnist_builder, field, spec, n_cond, message):
  config = _config(**{field: spec})
  make = inputs.make_train_iterator if field == "pp_train" else inputs.make_eval_iterator
  with pytest.raises(ValueError, match=re.escape(message)):
    make(config, _mesh(config), mnist_builder, n_cond_frames=n_cond)


def test_conditioning_spec_is_accepted(mnist_builder):
  config = _config(pp_train="random_window(4)|decode_video|resize_smaller(16)|center_crop(16)|gray_to_rgb|"
                            "value_range(-0.5,0.5)|cond_frames(1)")
  batch = next(iter(inputs.make_train_iterator(config, _mesh(config), mnist_builder, n_cond_frames=1)))
  assert batch["cond_frames"].shape == (8, 1, 16, 16, 3)
  np.testing.assert_array_equal(sharding.to_host(batch["cond_frames"])[:, 0], sharding.to_host(batch["video"])[:, 0])


def test_bad_pp_eval_fails_when_the_eval_data_is_made_not_at_the_first_eval(mnist_builder):
  # The trainers make their eval data before training; a bad pp_eval must stop them there, not hours later.
  config = _config(pp_eval="fixed_window(4)|decode_video|no_such_op")
  with pytest.raises(ValueError, match=re.escape("config.data.pp_eval: Unknown preprocess op 'no_such_op'")):
    suite.eval_data(config.data, _mesh(config), batch_size=8, defer=True)
  config = _config(pp_eval="fixed_window(4)|decode_video|gray_to_rgb|value_range(-0.5,0.5)")
  scheduled = suite.from_config(config, has_prior=False)
  with pytest.raises(ValueError, match=re.escape("needs the op string to end with |cond_frames(1)")):
    inputs.make_eval_data(config, _mesh(config), scheduled, n_cond_frames=1)
