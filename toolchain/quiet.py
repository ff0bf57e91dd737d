"""Keeping converters' chatter (native logs, progress bars, deprecation warnings) out of the summary.

The tools print to the process's stdout/stderr file descriptors from C++ as well as from Python;
what they printed is dropped when they succeed, and their exception carries the error."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings


@contextlib.contextmanager
def quiet():
    """Silence file descriptors 1 and 2, Python warnings and logging below ERROR for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    previous = logging.root.manager.disable
    # Python-level prints too, where sys.stdout is not descriptor 1 (a click test runner's, pytest's capture)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)
            logging.disable(previous)
