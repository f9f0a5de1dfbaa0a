"""How every command line here fails: one line on stderr naming the bad argument or input and a non-zero exit
status; the Python traceback only with ``--debug``.

    def main(argv: list[str] | None = None) -> int:
        return cli.run(_main, argv, "prepare.py")     # _main(argv) -> exit status, parsing with cli.ArgumentParser
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with a ``--debug`` flag, and a usage error in one line (exit status 2)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.add_argument("--debug", action="store_true",
                          help="on an error, show the Python traceback instead of one line")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(error: BaseException) -> str:
    """An exception's message on one line; its type's name first where the message alone would not say what
    went wrong (anything but a ValueError or an OSError, whose messages name the bad value or file)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = " ".join(str(message).split())
    if isinstance(error, (ValueError, OSError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None, prog: str) -> int:
    """``main(argv)``'s exit status (None counts as 0); an exception becomes ``PROG: error: MESSAGE`` on stderr and
    exit status 1, or, with ``--debug`` among the arguments, propagates with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1
