"""What the command line (`python -m workbench`) and the app (`python app.py`) share: bad input is one line.

    OneLineParser   argparse, with its errors on one line (the usage is in --help)
    one_line        the message of a library error, or `file: reason` of an OS error, on one line
"""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage and then the error; the promise is one line (the usage is in --help)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def one_line(e: BaseException) -> str:
    """The message of a library error, or `file: reason` of an OS error, on one line."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        msg = f"{e.filename}: {e.strerror}" + (f" (-> {e.filename2})" if e.filename2 is not None else "")
    else:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(msg.split())
