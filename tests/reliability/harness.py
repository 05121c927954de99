"""The shared reliability harness: every package CLI runs the same hostile-user scenarios.

Two halves:

- :func:`package_clis` finds every ``fewstep*`` console script (a package added later is found
  too) and :func:`numeric_options` every int/float option of every command, for ``test_options``.
- :class:`Writer` describes one command that writes a checkpoint (or a report folder); a package's
  ``test_<package>.py`` lists its writers and calls :func:`scenario_tests`, which returns the
  scenarios as parametrized pytest functions. Each scenario runs the real CLI in a subprocess and
  breaks it for real: SIGKILL between the weights and the card (``fewstep.core.faults``), a
  second writer, a SIGTERM mid-run, a resume with changed settings, a full and a read-only disk.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fewstep.core import checks, faults
from fewstep.core.io import checkpoint_paths, read_card

PROBES = ("0", "-1", "nan", "inf", "-inf", "1e308", "1000000000000000", "abc")


# -- the numeric options of every CLI ---------------------------------------------------------------
def package_clis() -> dict[str, object]:
    """{console script name: its typer app} for every installed fewstep CLI."""
    apps = {}
    for ep in entry_points(group="console_scripts"):
        if ep.name.startswith("fewstep") and ep.value.startswith("fewstep."):
            module = importlib.import_module(ep.value.split(":")[0])
            apps[ep.name] = module.app
    return apps


def _annotation(param) -> type | None:
    ann = param.type_descriptor.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):  # Optional[int], int | None
        ann = next((a for a in typing.get_args(ann) if a is not type(None)), None)
    return ann if ann in (int, float) else None


def numeric_options() -> list[tuple[str, str, str, object]]:
    """(cli, command, option flag, parser) for every int/float option of every command."""
    import typer.main

    found = []
    for cli, app in package_clis().items():
        group = typer.main.get_command(app)
        for name, cmd in sorted(group.commands.items()):
            for param in cmd.params:
                if not getattr(param, "opts", None) or not param.opts[0].startswith("--"):
                    continue
                if _annotation(param) is None:
                    continue
                found.append((cli, name, param.opts[0], param.type_descriptor.parameter_info.parser))
    return found


def accepted(parser, text: str) -> bool:
    try:
        parser.parse(text)
        return True
    except ValueError:
        return False


# -- running a CLI for real ---------------------------------------------------------------------
def run(argv: list[str], fault: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <argv>`` in a fresh process (one torch thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    env.pop("FEWSTEP_FAULT", None)
    if fault:
        env["FEWSTEP_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class Ran:
    """What a CLI run left: its exit code and everything it printed."""

    returncode: int
    output: str


def invoke(argv: list[str], fault: str | None = None) -> Ran:
    """Run the CLI in this process (no import cost): ``argv[0]`` is the CLI module, the rest its
    arguments. A fault is armed through the environment as for a subprocess; signals sent by a
    ``term`` fault reach this process, where the train loop's handler turns them into a save."""
    from typer.testing import CliRunner

    faults.reset()
    app = importlib.import_module(argv[0]).app
    env = {"FEWSTEP_FAULT": fault} if fault else {}
    old = os.environ.pop("FEWSTEP_FAULT", None)
    try:
        r = CliRunner().invoke(app, argv[1:], env={"COLUMNS": "300", **env})
    finally:
        os.environ.pop("FEWSTEP_FAULT", None)
        if old is not None:
            os.environ["FEWSTEP_FAULT"] = old
    text = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        text += "Traceback\n" + "".join(traceback.format_exception(r.exception))
    return Ran(r.exit_code, text)


@contextlib.contextmanager
def held_by_another_process(target: Path):
    """A second process holding ``target``'s write lock, and its pid."""
    code = ("import sys; from fewstep.core.locks import writing\n"
            f"with writing({str(target)!r}):\n    print('locked', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def said(p) -> str:
    return p.output if isinstance(p, Ran) else p.stdout + p.stderr


def no_traceback(p) -> None:
    assert "Traceback" not in said(p), said(p)


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.tmp"))


@dataclass(frozen=True)
class Writer:
    """A CLI command that writes ``out`` (a checkpoint stem, or a folder for reports).

    ``argv(out)`` is the whole command after ``python -m``; ``verify(out)`` checks the finished
    output loads and means what it should. A training command (``work(out)`` given) saves a
    resumable checkpoint there on every iteration (it is run with ``--save-every 1it``) and
    ``changed`` are arguments that change its settings (``key`` names the setting in the refusal).
    """

    name: str
    argv: Callable[[Path], list[str]]
    verify: Callable[[Path], None]
    work: Callable[[Path], Path] | None = None
    changed: tuple[str, ...] = ()
    key: str = ""
    folder: bool = False  # the output is a folder (report.md ...), not a checkpoint stem

    def committed(self, out: Path) -> Path:
        """The file whose rename commits the first save the scenarios break."""
        if self.work is not None:
            return self.work(out) / "checkpoint.safetensors"
        return checkpoint_paths(out)[0]


def scenario_tests(writers: list[Writer]) -> dict[str, Callable]:
    """The scenarios as pytest functions, parametrized over ``writers``; a package's test module
    does ``globals().update(scenario_tests(WRITERS))``."""
    every = pytest.mark.parametrize("w", writers, ids=[w.name for w in writers])
    trainers = [w for w in writers if w.work is not None]
    training = pytest.mark.parametrize("w", trainers, ids=[w.name for w in trainers])

    @every
    def test_kill_between_weights_and_card_then_a_second_writer(w: Writer, tmp_path):
        out = tmp_path / "out"
        killed = run(w.argv(out), fault="kill:weights-committed:1")
        assert killed.returncode == -signal.SIGKILL, said(killed)
        weights = w.committed(out)
        assert weights.is_file() and not weights.with_suffix(".json").exists()  # the gap the kill hit
        done = invoke(w.argv(out))
        assert done.returncode == 0, said(done)
        no_traceback(done)
        if w.work is not None:  # the committed weights were resumed from, with a word about the card
            assert "is missing" in said(done) and "resuming from iteration 1" in said(done), said(done)
        w.verify(out)
        assert not temp_files(tmp_path)
        # A second writer while another holds --out is refused at once; the output is untouched.
        target = out if w.folder else checkpoint_paths(out)[0]
        before = sorted((p.name, p.read_bytes()) for p in (target.iterdir() if w.folder else [target]) if p.is_file())
        with held_by_another_process(out) as pid:
            refused = invoke(w.argv(out))
        assert refused.returncode == 2, said(refused)
        assert f"another fewstep process (pid {pid}) is writing" in said(refused), said(refused)
        no_traceback(refused)
        after = sorted((p.name, p.read_bytes()) for p in (target.iterdir() if w.folder else [target]) if p.is_file())
        assert before == after
        w.verify(out)

    @every
    def test_kill_before_the_commit_leaves_the_last_commit_and_cleans_up(w: Writer, tmp_path):
        out = tmp_path / "out"
        killed = run(w.argv(out), fault="kill:weights-temp:1")
        assert killed.returncode == -signal.SIGKILL, said(killed)
        assert temp_files(tmp_path) and not w.committed(out).exists()
        done = invoke(w.argv(out))
        assert done.returncode == 0, said(done)
        no_traceback(done)
        assert "removed 1 temporary file" in said(done) or w.work is None, said(done)
        assert not temp_files(tmp_path)
        w.verify(out)

    @every
    def test_full_and_read_only_disks_are_one_line_and_lose_nothing(w: Writer, tmp_path):
        out = tmp_path / "out"
        nth = "2" if w.work is not None else "1"  # a trainer: its first save succeeds, the second hits a full disk
        full = invoke(w.argv(out), fault=f"enospc:weights-temp:{nth}")
        assert full.returncode == 2 and "the disk is full" in said(full), said(full)
        no_traceback(full)
        assert not temp_files(tmp_path)
        if w.work is not None:  # the committed checkpoint from before is intact
            assert read_card(w.work(out) / "checkpoint")["iteration"] == 1
        ro = invoke(w.argv(out), fault="erofs:weights-temp:1")
        assert ro.returncode == 2 and "read-only" in said(ro), said(ro)
        no_traceback(ro)
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        under = invoke(w.argv(blocker / "sub" / "out"))
        assert under.returncode == 2 and "a file stands where a folder is needed" in said(under), said(under)
        no_traceback(under)
        if os.geteuid() != 0:  # root ignores permissions
            locked = tmp_path / "locked"
            locked.mkdir()
            locked.chmod(0o555)
            try:
                denied = invoke(w.argv(locked / "out"))
                assert denied.returncode == 2 and "permission denied" in said(denied), said(denied)
            finally:
                locked.chmod(0o755)

    @training
    def test_sigterm_saves_and_a_changed_resume_is_refused(w: Writer, tmp_path):
        out = tmp_path / "out"
        stopped = invoke(w.argv(out), fault="term:iteration:2")
        assert stopped.returncode == 128 + signal.SIGTERM, said(stopped)
        assert "stopped by SIGTERM at iteration 2" in said(stopped) and "run the same command again" in said(stopped)
        no_traceback(stopped)
        assert read_card(w.work(out) / "checkpoint")["iteration"] == 2
        changed = invoke(w.argv(out) + list(w.changed))
        assert changed.returncode == 2 and w.key in said(changed) and "--restart" in said(changed), said(changed)
        no_traceback(changed)
        assert read_card(w.work(out) / "checkpoint")["iteration"] == 2  # the refused run changed nothing
        resumed = invoke(w.argv(out))
        assert resumed.returncode == 0 and "resuming from iteration 2" in said(resumed), said(resumed)
        w.verify(out)
        restarted = invoke(w.argv(out) + list(w.changed) + ["--restart"])
        assert restarted.returncode == 0 and "resuming" not in said(restarted), said(restarted)
        w.verify(out)

    fns = {f.__name__: f for f in (
        test_kill_between_weights_and_card_then_a_second_writer,
        test_kill_before_the_commit_leaves_the_last_commit_and_cleans_up,
        test_full_and_read_only_disks_are_one_line_and_lose_nothing,
    )}
    if trainers:
        fns[test_sigterm_saves_and_a_changed_resume_is_refused.__name__] = test_sigterm_saves_and_a_changed_resume_is_refused
    return fns


__all__ = ["PROBES", "Ran", "Writer", "accepted", "checks", "held_by_another_process", "invoke", "no_traceback",
           "numeric_options", "package_clis", "run", "said", "scenario_tests", "temp_files"]
