"""Evaluation: FVD (`fvd`, `i3d`), UCF-101 Inception Score (`c3d`, `inception_score`), per-video `metrics`,
an on-disk `features_cache`, and the paper's protocols (`protocols`)."""
