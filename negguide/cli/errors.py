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

    def _get_values(self, action, arg_strings):
        # argparse drops a '--' given as a flag's value (--steps=--), which leaves the flag an empty list instead of
        # an error: refuse it (a prompt after '--' is a positional and keeps working)
        if action.option_strings and "--" in arg_strings:
            self.error(f"argument {'/'.join(action.option_strings)}: '--' is not a value")
        return super()._get_values(action, arg_strings)
