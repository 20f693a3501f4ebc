"""Importing the original VQ-VAE: state-dict mapping, safe reading of original checkpoint files, the CLI."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import fixtures
from videogpt_jax.convert import checkpoint_io
from videogpt_jax.convert.torch_videogpt import export_vqvae_state_dict, load_vqvae



class _LazyTorch:
  """torch is the optional [torch] extra (installed in the project's environment); only file tests need it."""

  def __getattr__(self, name):
    return getattr(pytest.importorskip("torch"), name)


torch = _LazyTorch()


@pytest.fixture(scope="module")
def ref():
  z, meta = fixtures.load("vqvae_small.npz")
  return fixtures.state_dict(z), dict(meta["hparams"]["args"])


def test_export_inverts_load(ref):
  sd, args = ref
  model, variables = load_vqvae(sd, **args)
  assert bool(variables["codebook"]["initialized"])
  assert model.downsample == (2, 4, 4) and model.n_hiddens == 32 and model.attention
  back = export_vqvae_state_dict(variables)
  assert set(back) == set(sd)
  for k, v in sd.items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_load_takes_the_vqvae_part_of_a_videogpt_state_dict(ref):
  sd, args = ref
  full = {"vqvae." + k: v for k, v in sd.items()}
  full["fc_in.weight"] = np.zeros((3, 3), np.float32)  # A prior's own entries are ignored.
  _, variables = load_vqvae(full, **{**args, "lr": 3e-4, "gpus": 1})  # Unknown args are ignored.
  np.testing.assert_array_equal(variables["codebook"]["embeddings"], sd["codebook.embeddings"])


def test_load_reports_mismatches(ref):
  sd, args = ref
  with pytest.raises(KeyError, match="missing.*encoder.convs.0.conv.bias"):
    load_vqvae({k: v for k, v in sd.items() if k != "encoder.convs.0.conv.bias"}, **args)
  with pytest.raises(ValueError, match="shapes do not match"):
    load_vqvae(sd, **{**args, "n_hiddens": 64})
  with pytest.raises(KeyError, match="missing"):
    load_vqvae(sd, **{**args, "n_res_layers": 3})
  with pytest.raises(ValueError, match="embedding_dim"):
    load_vqvae(sd, **{k: v for k, v in args.items() if k != "embedding_dim"})


def _lightning_ckpt(sd, args, prefix=""):
  """The layout PyTorch Lightning writes (as the original's released checkpoints)."""
  return {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.6.6",
          "state_dict": {prefix + k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
          "hyper_parameters": {"args": argparse.Namespace(**args, lr=3e-4, data_path="/data/bair")},
          "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999)}]}]}


def test_read_lightning_and_plain_checkpoints(ref, tmp_path):
  sd, args = ref
  torch.save(_lightning_ckpt(sd, args), tmp_path / "vqvae.ckpt")
  got, hparams = checkpoint_io.read_checkpoint(tmp_path / "vqvae.ckpt", kind="vqvae")
  assert set(got) == set(sd)
  np.testing.assert_array_equal(got["codebook.embeddings"], sd["codebook.embeddings"])
  assert hparams["downsample"] == [2, 4, 4] and hparams["data_path"] == "/data/bair"

  # A prior's checkpoint holds its VQ-VAE under "vqvae."; a wrapper may add "model.".
  torch.save(_lightning_ckpt(sd, args, prefix="model.vqvae."), tmp_path / "gpt.ckpt")
  got, _ = checkpoint_io.read_checkpoint(tmp_path / "gpt.ckpt", kind="vqvae")
  assert set(got) == set(sd)

  torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, tmp_path / "plain.pt")
  got, hparams = checkpoint_io.read_checkpoint(tmp_path / "plain.pt")
  assert hparams == {} and set(got) == set(sd)


class _RunsCode:
  def __reduce__(self):
    return (print, ("this pickle ran code",))


def test_read_refuses_pickles_that_run_code(ref, tmp_path, capsys):
  sd, args = ref
  ckpt = _lightning_ckpt(sd, args)
  ckpt["callbacks"] = {"evil": _RunsCode()}
  torch.save(ckpt, tmp_path / "evil.ckpt")
  with pytest.raises(checkpoint_io.UnsafeCheckpointError, match="evil.ckpt: refused: loading it would import"):
    checkpoint_io.read_checkpoint(tmp_path / "evil.ckpt")
  assert "this pickle ran code" not in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match="missing.ckpt"):
    checkpoint_io.read_checkpoint(tmp_path / "missing.ckpt")


def test_convert_writes_a_restorable_checkpoint(ref, tmp_path):
  from videogpt_jax.checkpointing import Checkpointer
  from videogpt_jax.convert.__main__ import convert
  sd, args = ref
  torch.save(_lightning_ckpt(sd, args), tmp_path / "vqvae.ckpt")
  out = convert(tmp_path / "vqvae.ckpt", tmp_path / "out", kind="vqvae")

  ckpt = Checkpointer(out, read_only=True)
  config = ckpt.read_config()
  assert config["kind"] == "vqvae" and config["args"]["n_codes"] == 64
  model, expected = load_vqvae(sd, **config["args"])
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), expected)
  restored = ckpt.restore(abstract).state
  jax.tree.map(np.testing.assert_array_equal, restored, expected)

  with pytest.raises(FileExistsError, match="--overwrite"):
    convert(tmp_path / "vqvae.ckpt", out, kind="vqvae")
  convert(tmp_path / "vqvae.ckpt", out, kind="vqvae", overwrite=True)


def test_convert_a_prior_checkpoint(ref, tmp_path):
  from videogpt_jax.checkpointing import Checkpointer
  from videogpt_jax.convert.__main__ import convert
  z, meta = fixtures.load("gpt_small_uncond.npz")
  sd = {**fixtures.state_dict(z), **{"vqvae." + k: v for k, v in ref[0].items()}}
  torch.save(_lightning_ckpt(sd, meta["hparams"]["args"]), tmp_path / "gpt.ckpt")
  out = convert(tmp_path / "gpt.ckpt", tmp_path / "gpt", kind="gpt")
  assert Checkpointer(out, read_only=True).read_config()["kind"] == "gpt"
  # The same file also yields its VQ-VAE.
  vq_sd, _ = checkpoint_io.read_checkpoint(tmp_path / "gpt.ckpt", kind="vqvae")
  assert set(vq_sd) == set(ref[0])


@pytest.mark.slow
def test_cli(ref, tmp_path):
  sd, args = ref
  torch.save(_lightning_ckpt(sd, args), tmp_path / "vqvae.ckpt")
  torch.save({**_lightning_ckpt(sd, args), "callbacks": _RunsCode()}, tmp_path / "evil.ckpt")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "videogpt_jax.convert", "--kind=vqvae"]
  ok = subprocess.run(cmd + [f"--input={tmp_path / 'vqvae.ckpt'}", f"--output={tmp_path / 'out'}"],
                      capture_output=True, text=True, env=env)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "converted" in ok.stdout and (tmp_path / "out").is_dir()
  bad = subprocess.run(cmd + [f"--input={tmp_path / 'evil.ckpt'}", f"--output={tmp_path / 'out2'}"],
                       capture_output=True, text=True, env=env)
  assert bad.returncode != 0 and "UnsafeCheckpointError" in bad.stderr
  assert not (tmp_path / "out2").exists()
