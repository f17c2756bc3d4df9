"""`python -m imdbsent`: the same as the `imdbsent` command."""

try:
    from imdbsent.cli import main
except KeyboardInterrupt:  # Ctrl-C while importing (torchrun forwards it to every rank as it
    raise SystemExit(130) from None  # starts them): quietly, no traceback

main()
