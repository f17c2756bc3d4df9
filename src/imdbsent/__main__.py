"""`python -m imdbsent`: the same as the `imdbsent` command."""

from imdbsent.cli import main

main()
