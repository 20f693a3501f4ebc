"""The main job on its tiny `runlocal` config: every artefact is written, sane, and a rerun resumes."""
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest

from experiments import demo, demo_metrics
from experiments.configs import demo_moving_mnist
from videogpt_jax.models import sliding_window


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
  per_frame = saved["prior"]["test_bits_per_latent_frame"]
  assert len(per_frame) == config.vqvae.data.seq_len // config.vqvae.model.downsample[0]
  assert np.mean(per_frame) == pytest.approx(saved["prior"]["test_bits_per_dim"], rel=1e-6)
  assert 0 < saved["codebook"]["codes_used_train"] <= config.vqvae.model.n_codes
  assert saved["train"]["vqvae"]["final_step"] == config.vqvae.total_steps
  assert saved["train"]["gpt"]["final_step"] == config.gpt.total_steps

  # Sample quality: every candidate scored per continuation frame (1..T-1), plus the motion score.
  t, res, n = config.vqvae.data.seq_len, config.vqvae.data.resolution, config.num_clips
  assert saved["test_clips"] == config.eval_clips and saved["frames_scored"] == list(range(1, t))
  assert set(saved["scores"]) == set(demo.CANDIDATES) | {"real"}
  for name in demo.CANDIDATES:
    s = saved["scores"][name]
    assert len(s["psnr"]) == len(s["ssim"]) == t - 1, name
    assert all(0 < p <= 60 for p in s["psnr"]) and all(-1 <= v <= 1 for v in s["ssim"]), name
    assert s["motion_fd"] >= 0 and s["speed"] >= 0, name
  # Copying frame 0 never moves the digit: zero speed, a positive distance to the real trajectories.
  assert saved["scores"]["copy_first"]["speed"] == 0 and saved["scores"]["copy_first"]["motion_fd"] > 0
  assert saved["scores"]["real"]["speed"] > 0
  # Frame 0 moved at the real clips' mean speed (whole pixels): about that speed.
  assert saved["scores"]["moved_first"]["speed"] == pytest.approx(saved["scores"]["real"]["speed"], abs=0.5)
  long = saved["samples_long"]
  assert long["frames"] == 2 * t and len(long["psnr"]) == len(long["ssim"]) == 2 * t - 1
  latent_t = t // config.vqvae.model.downsample[0]
  assert long["windows"] == sliding_window.num_windows(latent_t, 2 * latent_t, config.long_overlap) > 1
  table = demo.report(saved)
  assert all(label in table for label in demo.CANDIDATES.values())

  gif = iio.imread(tmp_path / "samples.gif", index=None)
  assert gif.shape[:3] == (t, 3 * res + 2 * 2, n * res + (n - 1) * 2)  # real | reconstruction | sample rows
  long_gif = iio.imread(tmp_path / "samples_long.gif", index=None)
  assert long_gif.shape[:3] == (2 * t, 2 * res + 2, n * res + (n - 1) * 2)  # real | 2x-length sample rows
  still = iio.imread(tmp_path / "samples.png")
  k, scale = config.still_clips, config.still_scale
  # k blocks of 3 rows (real | reconstruction | sample), every other frame of the 2x length as columns.
  assert still.shape[:2] == (scale * (k * (3 * res + 2 * 2) + (k - 1) * 4), scale * (t * res + (t - 1) * 2))
  assert (tmp_path / "samples.mp4").stat().st_size > 0
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert (tmp_path / "vqvae" / "metrics.jsonl").exists() and (tmp_path / "gpt" / "metrics.jsonl").exists()

  # A second run finds both stages finished: no training steps, same models, same metrics.
  again = demo.run(_config(), tmp_path)
  assert again["train"]["vqvae"]["steps_this_run"] == 0 and again["train"]["gpt"]["steps_this_run"] == 0
  np.testing.assert_allclose(again["prior"]["test_bits_per_dim"], saved["prior"]["test_bits_per_dim"], rtol=1e-6)


def _digit_clips(n=6, t=5, size=16):
  """Clips of a bright 4x4 square moving one pixel per frame right (its centroid is exact)."""
  clips = np.zeros((n, t, size, size, 3), np.uint8)
  for i in range(n):
    for k in range(t):
      clips[i, k, 4 + i % 3:8 + i % 3, 2 + k:6 + k] = 255
  return clips


def test_moved_first_moves_frame_0_at_the_speed_in_random_directions():
  real = _digit_clips()
  moved = demo_metrics.moved_first(np.random.default_rng(0), real, speed=1.0, draws=3)
  assert moved.shape == (18, *real.shape[1:]) and moved.dtype == np.uint8
  np.testing.assert_array_equal(moved[:, 0], np.concatenate([real[:, 0]] * 3))  # frame 0 is the given frame
  steps = np.diff(demo_metrics.centroids(moved), axis=1)
  np.testing.assert_allclose(np.linalg.norm(steps[:, -1] + steps[:, -2], axis=-1) / 2, 1.0, atol=0.75)
  directions = np.arctan2(*(demo_metrics.centroids(moved)[:, -1] - demo_metrics.centroids(moved)[:, 0]).T)
  assert np.ptp(directions) > 1.0  # not one direction for all
  np.testing.assert_array_equal(demo_metrics._shifted(real[0, 0], 0, 0), real[0, 0])
  assert not demo_metrics._shifted(real[0, 0], 16, 0).any()  # moved out of the frame entirely


def test_evaluate_scores_several_videos_per_clip_against_that_clip():
  real = _digit_clips()
  scores = demo_metrics.evaluate(real, {"same": np.concatenate([real, real]), "still": np.repeat(real[:, :1], 5, 1)})
  assert scores["same"]["psnr"] == [60.0] * 4 and scores["same"]["motion_fd"] == pytest.approx(0, abs=1e-6)
  assert max(scores["still"]["psnr"]) < 60 and scores["still"]["speed"] == 0
  assert scores["real"]["speed"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="not a multiple of the 6 real clips"):
    demo_metrics.evaluate(real, {"odd": real[:4]})
