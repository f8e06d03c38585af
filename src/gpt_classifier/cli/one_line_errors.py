"""What the plain command lines (predict, export) share: errors as one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from gpt_classifier.errors import GPTClassifierError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to --help (not the whole usage text)."""

    def error(self, message: str):  # argparse's documented hook; must not return
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_main(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a command line's `main`: a `GPTClassifierError` becomes one line on stderr and exit status 2."""
    prog = os.path.basename(sys.argv[0]) or "gpt-classifier"
    try:
        main(argv)
    except GPTClassifierError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `predict.py ... | head -1`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's exit flush does not fail again
        return 0
    return 0
