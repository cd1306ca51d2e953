"""What the package's two command lines share: list-valued flags, and running a parsed command.

``stablerep-fast`` (cli.py) and ``python -m stablerep_fast.bench`` (bench/__main__.py) are the
only places that parse argv. Both run their command through ``run_command``: a problem with the
user's input or environment is one line on stderr (what, where, what to do) and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from stablerep_fast._deps import MissingExtraError
from stablerep_fast.errors import StableRepError


def csv_list(kind: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type: "a,b,c" -> [kind("a"), kind("b"), kind("c")] (empty items dropped)."""

    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {exc}") from exc

    return parse


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and return ``args.func(args)``; a user-facing error (StableRepError,
    ValueError, MissingExtraError, OSError) is printed as ``error: <one line>`` and gives 2.
    A command whose parser sets ``takes_any_arguments`` receives unknown arguments too."""
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except (StableRepError, ValueError, MissingExtraError) as exc:  # MissingExtraError: a stage imported lazily
        message = str(exc)
    except OSError as exc:  # the library's own (a message, no errno) or the system's
        message = str(exc) if exc.errno is None else describe_os_error(exc)
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


# What to do about an operating-system error, by errno.
OS_ERROR_ADVICE = {
    errno.ENOSPC: "free some space or write elsewhere; re-running resumes",
    errno.EDQUOT: "free some space or write elsewhere; re-running resumes",
    errno.EACCES: "check its permissions or write elsewhere",
    errno.EPERM: "check its permissions or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EEXIST: "a file stands where a folder is needed: choose another path",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, what to do."""
    what = exc.strerror or str(exc)
    where = f": {exc.filename}" if exc.filename else ""
    advice = OS_ERROR_ADVICE.get(exc.errno, "check the path")
    return f"{what}{where}; {advice}"
