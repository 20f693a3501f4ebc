"""Evaluation: FVD (`fvd`, `i3d`), UCF-101 Inception Score (`c3d`, `inception_score`), per-video `metrics`, an
on-disk `features_cache`, and the evaluators (`evaluators/<name>.py`, interface in `base`, config edge in `suite`)
that the trainers and `experiments/evaluate.py` run."""
