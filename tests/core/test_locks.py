"""One writer per output: the lock is exclusive across processes, re-entrant in one, and cleans
up after a killed writer."""

import os
import subprocess
import sys
import textwrap

import pytest

from fewstep.core.io import WriteError
from fewstep.core.locks import LockedError, lock_path, stale_temps, writing


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "model"
    code = textwrap.dedent(f"""
        from fewstep.core.locks import writing, LockedError
        try:
            with writing({str(out)!r}):
                pass
        except LockedError as e:
            print(e)
    """)
    with writing(out):
        assert lock_path(out).read_text().strip() == str(os.getpid())
        with writing(out):  # the same process may nest (a command and its train loop)
            pass
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert f"another fewstep process (pid {os.getpid()}) is writing" in r.stdout, r.stdout + r.stderr
    assert not lock_path(out).exists()  # released and removed
    with writing(out):  # and free again
        pass


def test_taking_the_lock_removes_temp_files_of_a_killed_writer(tmp_path):
    out = tmp_path / "model"
    (tmp_path / ".model.safetensors.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".other.safetensors.x.tmp").write_bytes(b"not ours")
    assert [p.name for p in stale_temps(out)] == [".model.safetensors.abc123.tmp"]
    with writing(out) as removed:
        assert [p.name for p in removed] == [".model.safetensors.abc123.tmp"]
    assert (tmp_path / ".other.safetensors.x.tmp").exists()


def test_an_unwritable_target_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match="a file stands where a folder is needed"):
        with writing(blocker / "sub" / "model"):
            pytest.fail("the body must not run")


def test_locked_error_is_a_user_error():
    assert issubclass(LockedError, ValueError)  # the CLIs print it as one line
