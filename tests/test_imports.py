"""Every module of the package imports on its own, in an interpreter that has imported nothing of the package.

An import cycle held together by import order (module A works only if B was imported first) fails here. To stay
fast, one fresh interpreter imports the heavy third-party libraries once and forks a child per module: each child
starts with none of the package's modules loaded, as `python -c "import videogpt_jax.x.y"` would.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "videogpt_jax"

_RUNNER = textwrap.dedent("""
  import json, os, sys, traceback
  # Third-party libraries only: nothing of the package may be loaded before the fork.
  import jax, flax.linen, optax, orbax.checkpoint, ml_collections, numpy, absl.flags, tensorflow, tensorflow_datasets
  assert not [m for m in sys.modules if m == "videogpt_jax" or m.startswith("videogpt_jax.")]
  results = {}
  for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
      os.close(read)
      try:
        __import__(name)
        message = ""
      except BaseException:
        message = traceback.format_exc(limit=-3)
      os.write(write, message.encode())
      os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
      message = f.read()
    _, status = os.waitpid(pid, 0)
    results[name] = message or ("" if status == 0 else f"exit status {status}")
  print(json.dumps(results))
""")


def package_modules() -> list[str]:
  names = []
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    names.append(".".join(parts))
  return names


def test_every_module_imports_in_a_fresh_interpreter():
  modules = package_modules()
  assert "videogpt_jax.train.steps" in modules and "videogpt_jax.inference" in modules
  out = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(modules)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(results) == set(modules)
  failed = {name: message for name, message in results.items() if message}
  assert not failed, "\n".join(f"{name}:\n{message}" for name, message in failed.items())


def test_the_runner_reports_a_module_that_cannot_be_imported(tmp_path):
  """The check above can fail: a two-module cycle that needs a name at import time is reported."""
  pkg = tmp_path / "cyclepkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from cyclepkg.b import B\nA = 1\n")
  (pkg / "b.py").write_text("from cyclepkg.a import A\nB = 2\n")
  out = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(["cyclepkg.a", "cyclepkg.b"])], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  assert "ImportError" in results["cyclepkg.a"] and "ImportError" in results["cyclepkg.b"]
