"""Shared CLI plumbing: user errors print one clear line and exit 2 instead of a traceback."""

from __future__ import annotations

import functools
import sys

import typer

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)


def friendly(fn):
    """Decorate a typer command so that bad input ends with ``error: <message>`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper
