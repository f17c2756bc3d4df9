"""`python -m imdbsent` and the `imdbsent` command (its entry point is `run`)."""


def run() -> None:
    """The command line; a Ctrl-C while it is still being imported (torchrun forwards it to
    every rank as it starts them) ends it quietly with 130, never with a traceback."""
    try:
        from imdbsent.cli import main
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
