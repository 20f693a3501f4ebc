"""ml_collections configs, one Python file per stage and dataset, big_vision style.

Each file's `get_config(arg)` takes a small comma-separated argument string after the file name, e.g.
`--config=experiments/configs/vqvae_bair.py:runlocal` or `...gpt_ucf101.py:classcond,runlocal`: named flags
(`runlocal`) and `key=value` pairs, read with `parse_arg`.
"""
from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `"runlocal,variant=4x32x32"` against `defaults` (which name every allowed key and its type).

  A bare word sets a bool default to True (`runlocal`); otherwise, if `variant` is a default, it means
  `variant=<word>` (`gpt_ucf101.py:classcond`).

  Raises:
    ValueError: an unknown key, or a value that does not convert to the default's type.
  """
  out = dict(defaults)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    key, sep, value = token.partition("=")
    if not sep:
      if isinstance(defaults.get(key), bool):
        out[key] = True
        continue
      if "variant" in defaults:
        out["variant"] = key
        continue
      raise ValueError(f"unknown config argument {key!r}; allowed: {sorted(defaults)}")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; allowed: {sorted(defaults)}")
    kind = type(defaults[key])
    try:
      out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    except ValueError as e:
      raise ValueError(f"config argument {key}={value!r} is not a {kind.__name__}") from e
  return ml_collections.ConfigDict(out)
