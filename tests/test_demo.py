"""The main job on its tiny `runlocal` config: every artefact is written, sane, and a rerun resumes."""
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest

from experiments import demo
from experiments.configs import demo_moving_mnist


def _config():
  config = demo_moving_mnist.get_config("runlocal")
  for stage in (config.vqvae, config.gpt):
    stage.num_devices = 4  # Of the 8 simulated devices: the batch of 4 is split over a 4-way data axis.
  return config


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path):
  config = _config()
  metrics = demo.run(config, tmp_path)

  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved == json.loads(json.dumps(metrics))
  assert math.isfinite(saved["reconstruction"]["psnr"]) and saved["reconstruction"]["psnr"] > 0
  assert 0 < saved["prior"]["test_bits_per_dim"] < math.log2(config.vqvae.model.n_codes) + 1
  assert 0 < saved["codebook"]["codes_used_train"] <= config.vqvae.model.n_codes
  assert saved["train"]["vqvae"]["final_step"] == config.vqvae.total_steps
  assert saved["train"]["gpt"]["final_step"] == config.gpt.total_steps

  gif = iio.imread(tmp_path / "samples.gif", index=None)
  t, res, n = config.vqvae.data.seq_len, config.vqvae.data.resolution, config.num_clips
  assert gif.shape[:3] == (t, 3 * res + 2 * 2, n * res + (n - 1) * 2)  # real | reconstruction | sample rows
  assert (tmp_path / "samples.mp4").stat().st_size > 0
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert (tmp_path / "vqvae" / "metrics.jsonl").exists() and (tmp_path / "gpt" / "metrics.jsonl").exists()

  # A second run finds both stages finished: no training steps, same models, same metrics.
  again = demo.run(_config(), tmp_path)
  assert again["train"]["vqvae"]["steps_this_run"] == 0 and again["train"]["gpt"]["steps_this_run"] == 0
  np.testing.assert_allclose(again["prior"]["test_bits_per_dim"], saved["prior"]["test_bits_per_dim"], rtol=1e-6)
