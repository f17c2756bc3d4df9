"""imdbsent: sentiment analysis of movie reviews with PyTorch."""

__version__ = "0.1.0"
