"""Evaluation: the synthetic-domain benchmark (`synthetic_bench`), the learning-gate command
(`probes`, over `train.gates`), and the paper's metrics (`frechet`, `i3d`, `syncnet`,
`evaluate`: FID, FVD, Sync-C / Sync-D, E-FID; networks in `models.metrics`)."""
