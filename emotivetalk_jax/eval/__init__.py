"""Evaluation: the synthetic-domain benchmark (`synthetic_bench`)."""
