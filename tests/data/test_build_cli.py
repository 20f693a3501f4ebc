"""Building from the command line: `build_and_report` in-process, and `python -m videogpt_jax.data.build` (slow:
a fresh interpreter spends ~15 s importing TensorFlow on a busy machine)."""
from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys

import pytest

from tests.data import conftest as data
from videogpt_jax.data import builders

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_build_and_report(tmp_path):
  manual, _ = data.write_ucf(tmp_path / "manual")
  out = io.StringIO()
  code = builders.build_and_report("ucf101", tmp_path / "tfds", manual_dir=manual, config="fold1_64", out=out)
  assert code == 0
  text = out.getvalue()
  assert "train: 6 examples" in text and "test: 3 examples" in text and "Skipped inputs: 3" in text
  assert "v_YoYo_g05_c01.avi: only 8 frames" in text
  assert (tmp_path / "tfds" / "ucf101" / "fold1_64" / "1.0.0" / "skipped_inputs.json").exists()
  # Already built: reports the saved skip count without rebuilding (and without manual_dir).
  out = io.StringIO()
  assert builders.build_and_report("ucf101", tmp_path / "tfds", config="fold1_64", out=out) == 0
  assert "Skipped inputs: 3" in out.getvalue()
  err = io.StringIO()
  code = builders.build_and_report("bair", tmp_path / "tfds", manual_dir=tmp_path / "nowhere", err=err)
  assert code == 1 and "bair_robot_pushing_dataset_v0.tar" in err.getvalue()


@pytest.mark.slow
def test_cli_subprocess(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "videogpt_jax.data.build", "--dataset=moving_mnist", "--config=tiny",
         f"--data_dir={tmp_path / 'tfds'}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT, env=env, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "train: 32 examples" in proc.stdout and "Skipped inputs: 0" in proc.stdout
  cmd = [sys.executable, "-m", "videogpt_jax.data.build", "--dataset=bair", f"--manual_dir={tmp_path / 'no'}",
         f"--data_dir={tmp_path / 'tfds'}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT, env=env, check=False, timeout=300)
  assert proc.returncode == 1 and "softmotion30_44k" in proc.stderr and "Traceback" not in proc.stderr
