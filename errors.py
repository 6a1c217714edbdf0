"""The one-line error contract: the two kinds of bad input, their one-line text, and the exit codes.

Every malformed input or argument ends as ``error: <file or flag>: <problem>``
on stderr, on one line, with exit status ``EXIT_BAD_INPUT`` (SPEC 1.4):

    from errors import DataError, InputError, one_line
    raise DataError(path, 'NaN or Inf in feature row 3')      # a data file
    raise InputError('--l_r: must be a positive finite number, got -1')   # an argument or an output path
"""
import argparse


class InputError(Exception):
    """Bad arguments or output paths: one line for the user."""


# Exit status of main.py, prepare_data.py and sweep.py: 0 done, 1 an unexpected error (a traceback).
EXIT_BAD_INPUT = 2          # bad input or arguments: one line on stderr
EXIT_DIVERGED = 3           # training diverged (a NaN/Inf loss, parameter or score); the best model is kept
EXIT_INTERRUPTED = 130      # Ctrl-C; the last end-of-epoch checkpoint is intact
EXIT_TERMINATED = 143       # SIGTERM (a scheduler's preemption): stopped at a safe point, the checkpoint is intact
TERMINATED_LINE = 'terminated: resume with --resume'
TERMINATED_EARLY_LINE = ('terminated before the first epoch ended: no checkpoint was written; run the same '
                         'command again (without --resume)')


class DataError(Exception):
    """A malformed input: the message names the file and what is wrong."""

    def __init__(self, path, problem):
        super().__init__(f'{path}: {problem}')
        self.path, self.problem = path, problem


def describe(error, limit=200):
    """'TypeName: first line of the message', for one-line error reports."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0][:limit]}' if lines else type(error).__name__


LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'}   # str.splitlines's


def one_line(text):
    """``text`` on one line: a line break in it (a file name may hold one) is written escaped, as ``\\n``."""
    return str(text).translate(LINE_BREAKS)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line, ``error: <flag>: <problem> (see --help)``, exit 2."""

    def error(self, message):
        message = ' '.join(message.split())
        if message.startswith('argument '):
            message = message[len('argument '):]
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')

