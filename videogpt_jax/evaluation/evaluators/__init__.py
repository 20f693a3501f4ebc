"""The evaluator registry: the module `evaluators/<name>.py` is the evaluator called `<name>`.

A new metric is one file here defining `class Evaluator` (see `videogpt_jax/evaluation/base.py` for the interface)
plus its name in a config's `config.evals`; nothing else is edited. Modules whose name starts with `_` are helpers,
not evaluators.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def names() -> tuple[str, ...]:
  """Every registered evaluator's name (the module names of this package)."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def get(name: str) -> type:
  """The `Evaluator` class registered as `name`; a `ValueError` naming the known ones otherwise."""
  if name not in names():
    raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(names())}")
  # The registry is the package itself: resolving by module name is what makes a new file all a metric needs.
  return importlib.import_module(f"{__name__}.{name}").Evaluator


def build(name: str, **options: Any) -> Any:
  """`get(name)(**options)`; an option the evaluator does not take is a `ValueError` that names it."""
  cls = get(name)
  try:
    return cls(**options)
  except TypeError as e:
    raise ValueError(f"evaluator {name!r}: {e}") from None
