"""imdbsent: sentiment analysis of movie reviews with PyTorch."""

# First, before anything can import torch: idle OpenMP workers sleep instead of spinning (unless
# the user chose OMP_WAIT_POLICY), so that concurrent imdbsent processes share the cores.
from imdbsent import threads as threads  # noqa: I001

__version__ = "0.1.0"
