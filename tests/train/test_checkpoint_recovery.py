"""Never lose a run: damaged steps are moved aside and resume falls back; only finite states are saved; the newest
good step survives rotation; metrics.jsonl holds each step once after a resume."""
from __future__ import annotations

import json
import logging
import math
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.train.synthetic import SyntheticIterator
from tests.train.test_vqvae_trainer import tiny_config
from videogpt_jax import checkpointing
from videogpt_jax.train import common, loop, vqvae_trainer


def _state(scale=1.0):
  params = {"w": jnp.arange(32, dtype=jnp.float32).reshape(8, 4) * scale, "b": jnp.full((4,), scale)}
  return common.TrainState(step=jnp.array(7, jnp.int32), params=params, opt_state=optax.adam(1e-3).init(params),
                           model_state={"stats": jnp.ones((3,)) * scale})


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _files(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _largest(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate_data(root):
  data = _largest(root / "2" / "params")
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _garbage(*parts):
  def damage(root):
    root.joinpath("2", *parts).write_bytes(b"\x00\xffgarbage{")
  return damage


def _cut_short(*parts):
  def damage(root):
    path = root.joinpath("2", *parts)
    path.write_bytes(path.read_bytes()[:5])
  return damage


def _zero_length(root):
  for p in (root / "2").rglob("*"):
    if p.is_file():
      p.write_bytes(b"")


def _remove(*paths):
  def damage(root):
    for parts in paths:
      shutil.rmtree(root.joinpath("2", *parts))
  return damage


def _empty_stray(root):
  (root / "300").mkdir()
  return 300


def _nan_arrays(root):
  shutil.rmtree(root / "2")
  ckpt = checkpointing.Checkpointer(root, async_save=False)
  ckpt.save(2, _state(math.nan), config={"n": 2}, data_state={"i": 2})
  ckpt.close()


# name -> (damage(root) -> damaged step or None for step 2, expected reason slug)
DAMAGE = {
    "truncated data file": (_truncate_data, "metadata"),
    "cut-short metrics file": (_cut_short("metrics", "metrics"), "metadata"),
    "garbage tree metadata": (_garbage("params", "_METADATA"), "metadata"),
    "garbage array manifest": (_garbage("params", "manifest.ocdbt"), "metadata"),
    "garbage config json": (_garbage("config", "metadata"), "data"),
    "zero-length files": (_zero_length, "metadata"),
    "missing params item": (_remove(["params"]), "metadata"),
    "missing array files": (_remove(["params", "d"], ["params", "ocdbt.process_0"]), "metadata"),
    "empty stray step folder": (_empty_stray, "empty"),
    "NaN arrays": (_nan_arrays, "nonfinite"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_step_is_moved_aside_and_the_previous_one_restores(tmp_path, kind, caplog):
  root = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpointer(root, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _state(float(step)), config={"n": step}, data_state={"i": step}, good=True)
  ckpt.close()
  (root / "notes").mkdir()  # a stray folder that is no step: ignored, never moved
  damage, reason = DAMAGE[kind]
  damaged = damage(root) or 2
  want = damaged - 1 if damaged == 2 else 2
  before = _files(root / str(damaged))

  with caplog.at_level(logging.WARNING):
    restored = checkpointing.Checkpointer(root).restore_newest_good(_abstract(_state()))
  assert restored.step == want and restored.data_state == {"i": want}
  np.testing.assert_array_equal(np.asarray(restored.state.params["b"]), np.full((4,), float(want)))
  moved = root / "quarantine" / f"{damaged}-{reason}"
  assert moved.is_dir() and _files(moved) == before, "the damaged step must be kept aside unchanged"
  assert not (root / str(damaged)).exists() and (root / "notes").is_dir()
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "moved it to" in r.getMessage()]
  assert len(warnings) == 1 and f"step {damaged}" in warnings[0] and str(moved) in warnings[0]
  assert "\n" not in warnings[0] and len(warnings[0]) < 600, warnings[0]  # one line, no TensorStore dump

  # The run goes on: the quarantine folder is no step, and the next save works.
  again = checkpointing.Checkpointer(root, async_save=False)
  assert again.all_steps() == sorted({1, 2} - {damaged})
  again.save(5, _state(5.0), config={}, data_state={}, good=True)
  again.close()
  assert checkpointing.Checkpointer(root).restore_newest_good(_abstract(_state())).step == 5


def test_incompatible_checkpoint_is_not_damage_and_nothing_moves(tmp_path):
  root = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpointer(root, async_save=False)
  ckpt.save(1, _state(), config={}, data_state={}, good=True)
  ckpt.close()
  before = _files(root)
  other = _state()
  other = other.replace(params={"w": jnp.zeros((8, 5)), "b": other.params["b"]})
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match="incompatible"):
    checkpointing.Checkpointer(root).restore_newest_good(_abstract(other))
  assert _files(root) == before and not (root / "quarantine").exists()


def test_no_step_restores_is_one_error_and_all_are_kept_aside(tmp_path):
  root = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpointer(root, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _state(), config={}, data_state={}, good=True)
  ckpt.close()
  (root / "1" / "metrics" / "metrics").write_bytes(b"")  # Orbax cannot even list the directory with this one
  (root / "2" / "params" / "_METADATA").write_bytes(b"{")
  with pytest.raises(checkpointing.CheckpointError, match="none of the checkpoints"):
    checkpointing.Checkpointer(root).restore_newest_good(_abstract(_state()))
  assert sorted(p.name for p in (root / "quarantine").iterdir()) == ["1-metadata", "2-metadata"]
  assert checkpointing.Checkpointer(root).restore_newest_good(_abstract(_state())) is None


def test_rotation_keeps_the_newest_good_step(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2, async_save=False)
  ckpt.save(1, _state(), config={}, data_state={}, good=True)
  for step in (2, 3, 4, 5):  # states the caller could not verify finite
    ckpt.save(step, _state(), config={}, data_state={}, good=False)
  ckpt.close()
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [1, 4, 5]
  # Once a newer good step exists, the older one rotates out as usual.
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2, async_save=False)
  for step in (6, 7, 8):
    ckpt.save(step, _state(), config={}, data_state={}, good=True)
  ckpt.close()
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [7, 8]


def test_nan_learning_rate_saves_nothing_and_the_run_resumes_from_a_finite_step(tmp_path):
  """A finished run continued with lr=nan and checkpoint_every=1: the loss of its first step is still finite
  (computed before the update), the updated parameters are not; that state must never be saved."""
  config = tiny_config(total_steps=8, checkpoint_every=4, log_every=4, keep_checkpoints=2)
  vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  ckpt_dir = tmp_path / "checkpoints"
  before = _files(ckpt_dir)
  bad = tiny_config(total_steps=12, checkpoint_every=1, log_every=4, keep_checkpoints=2, lr=math.nan)
  with pytest.raises(common.NonFiniteLossError,
                     match=r"non-finite at step 9: .*last good checkpoint is step 8 in "):
    vqvae_trainer.train_and_evaluate(bad, tmp_path, train_iter=SyntheticIterator(bad))
  assert _files(ckpt_dir) == before  # nothing saved, nothing rotated out
  assert checkpointing.Checkpointer(ckpt_dir).all_steps() == [4, 8]
  resumed = tiny_config(total_steps=12, checkpoint_every=4, log_every=4, keep_checkpoints=2)
  result = vqvae_trainer.train_and_evaluate(resumed, tmp_path, train_iter=SyntheticIterator(resumed))
  assert [s for s, _ in result.history] == [9, 10, 11, 12]
  assert all(math.isfinite(m["loss"]) for _, m in result.history)


def _metric_steps(path):
  return [json.loads(line)["step"] for line in pathlib.Path(path).read_text().splitlines()]


class _Killed(Exception):
  pass


class _KilledAt(SyntheticIterator):
  """Stands in for `kill -9`: the run dies when it asks for batch `kill_at` (after its rows up to then are out)."""

  def __init__(self, config, kill_at):
    super().__init__(config)
    self.kill_at = kill_at

  def __next__(self):
    if self._step + 1 == self.kill_at:
      raise _Killed()
    return super().__next__()


def test_metrics_after_a_kill_and_resume_hold_each_step_once(tmp_path):
  config = tiny_config(total_steps=12, checkpoint_every=4, log_every=1)
  with pytest.raises(_Killed):
    vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=_KilledAt(config, kill_at=11))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 10, "loss": 0.')  # a row cut short by the kill
  assert _metric_steps_valid(tmp_path / "metrics.jsonl") == list(range(1, 11))
  deadline = time.time() + 120  # the killed run's background write of step 8 finishes on its own
  while checkpointing.Checkpointer(tmp_path / "checkpoints").latest_step() != 8 and time.time() < deadline:
    time.sleep(0.2)
  assert checkpointing.Checkpointer(tmp_path / "checkpoints").latest_step() == 8
  vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  assert _metric_steps(tmp_path / "metrics.jsonl") == list(range(1, 13))  # steps 9, 10 once, no broken line


def _metric_steps_valid(path):
  out = []
  for line in pathlib.Path(path).read_text().splitlines():
    try:
      out.append(json.loads(line)["step"])
    except ValueError:
      pass
  return out


def test_drop_rows_after_keeps_earlier_rows_verbatim(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (1, 2, 3, 4, 3, 4)]
  path.write_text("".join(rows))
  loop.drop_rows_after(path, 2)
  assert path.read_text() == "".join(rows[:2])
  loop.drop_rows_after(path, 5)  # nothing to drop: the file is left as it is
  assert path.read_text() == "".join(rows[:2])
