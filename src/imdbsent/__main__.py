"""`python -m imdbsent` and the `imdbsent` command (its entry point is `run`)."""


def run() -> None:
    """The command line; a Ctrl-C while it is still being imported (torchrun forwards it to
    every rank as it starts them) ends it quietly with 130, never with a traceback; one while
    the process ends, after the command, is said (`say_late_stops`)."""
    try:
        from imdbsent.cli import leave, main, say_late_stops
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    try:
        main()
    except SystemExit as exc:
        say_late_stops(exc.code)
        leave(exc.code)


if __name__ == "__main__":
    run()
