"""emotivetalk_jax: JAX/Flax NNX implementation of EmotiveTalk (CVPR 2025)."""

__version__ = "0.1.0"
