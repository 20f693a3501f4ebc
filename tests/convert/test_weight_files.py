"""Hostile and damaged weight files: one line naming the file and what is wrong, no code run, numpy arrays load,
and no message ever suggests loading unsafely."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from videogpt_jax.convert import __main__ as convert_main
from videogpt_jax.convert import checkpoint_io, i3d_weights


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def _truncated(path, src):
  data = src.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return path


@pytest.fixture
def files(tmp_path):
  marker = tmp_path / "pwned"
  out = {"marker": marker}
  torch.save({"w": torch.ones(4), "evil": _Evil(str(marker))}, out.setdefault("evil", tmp_path / "evil.pt"))
  torch.save({"w": torch.ones(300)}, out.setdefault("good", tmp_path / "good.pt"))
  out["truncated"] = _truncated(tmp_path / "truncated.pt", out["good"])
  (out.setdefault("text", tmp_path / "notes.pt")).write_text("hello world\n")
  (out.setdefault("empty", tmp_path / "empty.pt")).write_bytes(b"")
  torch.save([torch.ones(2)], out.setdefault("list", tmp_path / "list.pt"))
  torch.save({"encoder.conv.weight": torch.ones(2, 2)}, out.setdefault("other", tmp_path / "other_model.pt"))
  torch.save({"state_dict": {"w": torch.ones(2), "arr": np.arange(6, dtype=np.float32).reshape(2, 3)},
              "hyper_parameters": {"n_codes": np.int64(8)}}, out.setdefault("numpy", tmp_path / "numpy.ckpt"))
  pickle.dump({"params": _Evil(str(marker))}, open(out.setdefault("evil_pkl", tmp_path / "evil.pkl"), "wb"))
  pickle.dump({"params": {"a": np.ones(3)}, "batch_stats": {}}, open(tmp_path / "good.pkl", "wb"))
  out["truncated_pkl"] = _truncated(tmp_path / "truncated.pkl", tmp_path / "good.pkl")
  (out.setdefault("text_pkl", tmp_path / "notes.pkl")).write_text("hello world\n")
  return out


CASES = {  # file -> (what is wrong, as the message says it)
    "evil": (checkpoint_io.UnsafeCheckpointError, "refused: loading it would import posix.mkdir"),
    "truncated": (checkpoint_io.WeightsFileError, "truncated or damaged"),
    "text": (checkpoint_io.WeightsFileError, "not a PyTorch checkpoint"),
    "empty": (checkpoint_io.WeightsFileError, "empty file"),
    "list": (checkpoint_io.WeightsFileError, "not our model: it holds a list"),
}


def _check_one_line(message: str, path) -> None:
  assert "\n" not in message and str(path) in message, message
  assert "weights_only" not in message and "trust" not in message, message


@pytest.mark.parametrize("name", sorted(CASES))
def test_read_checkpoint_gives_one_line_per_failure(files, name):
  error, words = CASES[name]
  with pytest.raises(error) as e:
    checkpoint_io.read_checkpoint(files[name], "vqvae")
  assert words in str(e.value)
  _check_one_line(str(e.value), files[name])
  assert not files["marker"].exists()


def test_numpy_arrays_inside_a_checkpoint_load(files):
  state_dict, hparams = checkpoint_io.read_checkpoint(files["numpy"])
  np.testing.assert_array_equal(state_dict["arr"], np.arange(6, dtype=np.float32).reshape(2, 3))
  assert hparams["n_codes"] == 8


def test_converter_names_a_file_that_is_not_our_model(files, tmp_path):
  with pytest.raises(checkpoint_io.WeightsFileError, match="not our model: not an original VideoGPT vqvae") as e:
    convert_main.convert(files["other"], tmp_path / "out", "vqvae")
  _check_one_line(str(e.value), files["other"])
  assert not (tmp_path / "out").exists()


I3D_CASES = {
    "evil": (checkpoint_io.UnsafeCheckpointError, "refused: loading it would import posix.mkdir"),
    "evil_pkl": (checkpoint_io.UnsafeCheckpointError, "refused: loading it would import posix.mkdir"),
    "truncated": (checkpoint_io.WeightsFileError, "truncated or damaged"),
    "truncated_pkl": (checkpoint_io.WeightsFileError, "truncated weights pickle"),
    "text_pkl": (checkpoint_io.WeightsFileError, "not a weights pickle"),
    "text": (checkpoint_io.WeightsFileError, "not a PyTorch checkpoint"),
    "other": (checkpoint_io.WeightsFileError, "not our model: I3D state dict is missing"),
}


@pytest.mark.parametrize("name", sorted(I3D_CASES))
def test_i3d_loader_gives_one_line_per_failure(files, name):
  error, words = I3D_CASES[name]
  with pytest.raises(error) as e:
    i3d_weights.load(files[name])
  assert words in str(e.value)
  _check_one_line(str(e.value), files[name])
  assert not files["marker"].exists()
