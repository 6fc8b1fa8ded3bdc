"""The command line's error type: a :class:`UsageError` is bad input (a flag, a file, a model folder) and ends
the command with one line on stderr and exit status 2; any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import contextlib


class UsageError(Exception):
    """Bad command-line input, with a message that names the value and the fix."""


@contextlib.contextmanager
def user_input():
    """Inside this block, the library's input errors (``ValueError``, ``TypeError``, a missing file) are the
    user's: they become :class:`UsageError`. Wrap only the steps that read user input, never the compute."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UsageError` (one line, exit 2) instead of a usage dump."""

    def error(self, message: str):
        raise UsageError(message)
