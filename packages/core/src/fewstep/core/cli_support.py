"""Shared CLI plumbing: user errors print one clear line and exit 2 instead of a traceback.

``friendly`` wraps every command of every package CLI:

- bad input (ValueError, TypeError, FileNotFoundError, a diverged run's FloatingPointError) and
  an environment that refuses (OSError: disk full, read-only, permission) end with ``error: ...``
  and exit code 2; an allocation that cannot be served says which option to lower;
- a training run stopped by Ctrl-C or SIGTERM (it has saved: ``train.Stopped``) prints where it
  stopped and exits 128 + the signal number, as shells expect;
- checkpoint warnings (a stale JSON card) print as one ``warning: ...`` line.
"""

from __future__ import annotations

import functools
import sys
import warnings

import typer

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)
_ALLOCATION = ("can't allocate memory", "out of memory", "not enough memory", "allocate")


def _shower(original):
    from .io import CheckpointWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CheckpointWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    return show


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


def friendly(fn):
    """Decorate a typer command so that bad input ends with ``error: <message>`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .io import describe_os_error
        from .train import Stopped

        with warnings.catch_warnings():
            warnings.showwarning = _shower(warnings.showwarning)
            warnings.filterwarnings("ignore", message="Using `json`-module")  # gluonts' import-time advice, not ours
            try:
                return fn(*args, **kwargs)
            except Stopped as e:
                typer.echo(str(e), err=True)
                sys.exit(128 + int(e.signum))
            except KeyboardInterrupt:
                typer.echo("interrupted; nothing half-written was kept (the last saved checkpoint is intact)", err=True)
                sys.exit(130)
            except USER_ERRORS as e:
                _fail(str(e))
            except OSError as e:
                where = f"{e.filename}: " if e.filename else ""
                _fail(f"{where}{describe_os_error(e)}")
            except MemoryError:
                _fail("ran out of memory; lower --n, --num-samples or --batch-size")
            except RuntimeError as e:
                text = str(e)
                if any(s in text.lower() for s in _ALLOCATION):
                    _fail(f"ran out of memory ({text.splitlines()[0][:160]}); lower --n, --num-samples or --batch-size")
                raise

    return wrapper


# -- options every training command shares ----------------------------------------------------------
def save_every_option():
    from . import checks

    return typer.Option("2m", "--save-every", parser=checks.save_every,
                        help="write the resumable checkpoint this often: a time of work (90s, 2m, 1h) or iterations (250it)")


def restart_option():
    return typer.Option(False, "--restart", help="discard the saved run in the work folder and start over (default: resume it)")


def output_lock(out, what: str = ""):
    """Hold ``out``'s write lock for the whole command (``locks.writing``): a second process aimed at
    the same --out fails at once, and an unwritable --out fails before any work."""
    from .io import checkpoint_stem
    from .locks import writing

    return writing(checkpoint_stem(out), what or str(checkpoint_stem(out)))


def written(out) -> str:
    """``"OUT.safetensors and OUT.json"`` for the checkpoint stem ``out`` names (``--out x.json`` names ``x``)."""
    from .io import checkpoint_paths

    w, c = checkpoint_paths(out)
    return f"{w} and {c}"
