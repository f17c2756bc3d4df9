"""The one exception type for a user's mistake: the CLI prints its message as one line."""

import errno


class UserError(Exception):
    """Something the user can fix: a missing file, a bad value, bad input. Never a bug."""


def briefly(names: list[str], most: int = 4) -> str:
    """`names` as a message lists them: the first `most`, and how many in all (a folder of
    hundreds must not make a line of kilobytes)."""
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


class Usage(UserError):
    """A command line that cannot run as given: nothing to read (`imdbsent predict` alone), or
    flags that conflict. A usage error: status 2 and a pointer to the command's help, as
    click's own."""


class BadValue(UserError):
    """A parameter's value out of its range, named as the library spells it (`split_ratio`,
    `train.epochs`); the command line names its flag instead and exits 2, as click does for a
    value it cannot parse."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (by the CLI's handler) so that work stops as it does
    for Ctrl-C: a BaseException, as KeyboardInterrupt is, so that no library's `except
    Exception` (torch's profiler import has one) swallows it and trains on."""


def stop_status(stop: BaseException | type[BaseException]) -> int:
    """The exit status of a command that a signal stopped: 143 for SIGTERM (`Terminated`),
    130 for Ctrl-C."""
    kind = stop if isinstance(stop, type) else type(stop)
    return 143 if issubclass(kind, Terminated) else 130


def stop_word(status: int) -> str:
    """How a stop with this status is said: "terminated" (SIGTERM's 143), else
    "interrupted"."""
    return "terminated" if status == 143 else "interrupted"


class Pending:
    """The interruption that the CLI's signal handlers raised (KeyboardInterrupt for SIGINT,
    Terminated for SIGTERM), kept so that each step of work (`threads.balanced`) raises it
    again: pyarrow's lazy import of pandas, on a first `to_numpy`, swallows any exception
    raised within it, and a rank of `train --nproc` stopped then trained on to the end.
    `said`: the command has said how it stopped (train and prepare say what was kept)."""

    raised: type[BaseException] | None = None
    said = False
    holding = False  # a row is being written: a first stop waits until it is out
    held = False  # a stop came while holding, not raised yet

    @classmethod
    def raise_again(cls) -> None:
        """Raise the interruption kept, if any (where work goes on after a library swallowed
        it)."""
        if cls.raised is not None:
            raise cls.raised()


class Shared(UserError):
    """Rank 0's user error, received by another rank of a distributed training: every rank
    stops, and rank 0 alone says why."""


class OutputFailed(Exception):
    """Standard output could not be written: its reader went away (EPIPE) or its disk is full.
    Not an OSError, which click would take for a broken pipe and end with status 1."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror)
        self.error = error

    @property
    def code(self) -> int:
        """141 for a reader that went away (`| head`), as for any program SIGPIPE ends; 1 else."""
        return 141 if self.error.errno == errno.EPIPE else 1

    @property
    def message(self) -> str:
        """The line to say: none for a reader that went away (Unix tools stop quietly)."""
        return "" if self.code == 141 else f"cannot write the output: {self.error.strerror}"
