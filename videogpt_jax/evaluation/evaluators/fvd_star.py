"""FVD*: the FVD protocol of `fvd.py` against the VQ-VAE's reconstructions of the same real clips (the paper's
measure of the prior alone). The conditioning still comes from the real clips."""
from __future__ import annotations

import dataclasses

from videogpt_jax.evaluation.evaluators import fvd


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator(fvd.Evaluator):
  """Options: as `fvd.Evaluator`."""
  reference = "vqvae_reconstructions"
  name = "fvd_star"
