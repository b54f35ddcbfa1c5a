"""A run owns its folder: foreign files refused (and kept), one live run per folder (a lock naming
its holder, taken over from a dead process), stale temporaries removed, files as the umask says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from misuse_helpers import FAST, bright, make

from unifiedctx.files import FileLock, FolderInUse
from unifiedctx.train import fit, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("names", [
    ("config.json", "history.json", "history.csv", "best.pt"),  # another run's files, but no last.pt
    ("notes.txt",),                                               # a person's file
])
def test_a_folder_with_other_files_is_refused_and_left_as_it_was(tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(f"someone else's {name}".encode())
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=r"allow_foreign=True") as err:
        fit(make(), bright(), epochs=1, out=tmp_path, **FAST)
    assert names[0] in str(err.value) and "--" not in str(err.value)   # the API names its own keyword
    assert snapshot(tmp_path) == before


def test_allow_foreign_trains_beside_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    fit(make(), bright(), epochs=1, out=tmp_path, allow_foreign=True, **FAST)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_a_resumed_run_refuses_foreign_files_too(tmp_path):
    fit(make(), bright(), epochs=1, out=tmp_path, **FAST)
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="mine.txt"):
        fit(make(), bright(), epochs=1, out=tmp_path, resume=True, **FAST)


def test_the_same_run_killed_before_its_first_checkpoint_restarts(tmp_path):
    class Stop(Exception):
        pass

    def stop(event):
        raise Stop

    with pytest.raises(Stop):
        fit(make(), bright(), epochs=1, out=tmp_path, callback=stop, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # lock released and removed
    fit(make(), bright(), epochs=1, out=tmp_path, **FAST)  # its own config.json: accepted
    with pytest.raises(FileExistsError):  # but another run's config.json is not
        (tmp_path / "last.pt").unlink()
        fit(make(), bright(), epochs=1, out=tmp_path, **{**FAST, "lr": 0.5})


def test_a_tilde_in_out_means_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    fit(make(), bright(), epochs=1, out="~/runs/a", **FAST)
    assert read_checkpoint(tmp_path / "home" / "runs" / "a" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "~").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="out must be a folder"):
        fit(make(), bright(), epochs=1, out=tmp_path / "f", **FAST)


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    import torch
    torch.set_num_threads(1)
    from misuse_helpers import FAST, bright, make
    from unifiedctx.train import StepDone, fit
    out, go = Path(sys.argv[1]), Path(sys.argv[2])

    def wait(event):
        if isinstance(event, StepDone) and event.step == 1:
            go.with_suffix(".ready").touch()
            while not go.exists():
                time.sleep(0.05)

    fit(make(), bright(), epochs=1, out=out, callback=wait, **FAST)
""")


def test_a_second_process_into_the_same_folder_stops_at_once_naming_the_holder(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(go), str(ROOT / "tests")], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not go.with_suffix(".ready").exists():
            assert holder.poll() is None and time.time() < deadline, "the holder process ended early"
            time.sleep(0.05)
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == holder.pid and lock["host"] and lock["started"]
        t0 = time.perf_counter()
        with pytest.raises(FolderInUse, match=rf"in use by another process \(pid {holder.pid} on "):
            fit(make(), bright(), epochs=1, out=out, **FAST)
        assert time.perf_counter() - t0 < 5  # at once, not after training
        assert not (out / "last.pt").exists()  # the intruder wrote nothing
    finally:
        go.touch()
        rc = holder.wait(timeout=120)
    assert rc == 0
    state = read_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and state["recipe"]["lr"] == FAST["lr"]
    assert not (out / ".lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "long ago"}))
    fit(make(), bright(), epochs=1, out=tmp_path, **FAST)
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and not (tmp_path / ".lock").exists()


def test_the_lock_is_held_for_the_whole_run(tmp_path):
    seen = []

    def probe(event):
        with pytest.raises(FolderInUse, match=f"pid {os.getpid()}"):
            FileLock(tmp_path / ".lock", "run folder").acquire()
        seen.append(type(event).__name__)

    fit(make(), bright(), epochs=2, out=tmp_path, callback=probe, **FAST)
    assert seen.count("EpochDone") == 2 and seen.count("StepDone") == 16 and seen[0] == "TrainingStarted"


def test_temporary_files_of_a_killed_process_are_removed_at_the_next_start(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".last.pt.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")
    fit(make(), bright(), epochs=1, out=fresh, **FAST)
    assert sorted(p.name for p in fresh.iterdir()) == [
        "best.pt", "config.json", "history.csv", "history.json", "last.pt"]

    (fresh / ".history.json.abc123_z.tmp").write_text("[half")
    (fresh / ".best.pt.zz9zz9zz.tmp").write_bytes(b"half")
    with pytest.raises(ValueError, match="epochs: 1 in the checkpoint, 2 now"):
        fit(make(), bright(), epochs=2, out=fresh, resume=True, **FAST)
    assert not list(fresh.glob(".*.tmp"))  # the folder is ours: removed, even by a run then refused


#: A person's hidden files that look like a run's temporaries but are not named as tempfile names them.
LOOKALIKES = {".history.json.bak.tmp": b"[my backup]", ".last.pt.keep.tmp": b"my weights",
              ".config.json.K1LL3D_X.tmp": b"{}", ".notes.txt.abcdefgh.tmp": b"notes",
              ".last.pt.abcdefgh.tmp.old": b"old"}


def _plant(folder: Path, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)


@pytest.mark.parametrize("resume", [False, True])
def test_a_persons_lookalike_temporaries_make_a_folder_foreign_and_are_kept(tmp_path, resume):
    out = tmp_path / "run"
    if resume:
        fit(make(), bright(), epochs=1, out=out, **FAST)  # a run of ours, then the person's files beside it
    ours = out / ".last.pt.k1ll3d_x.tmp"  # a temporary of ours, left by a killed run
    _plant(out, {**LOOKALIKES, ours.name: b"half"})
    before = snapshot(out)
    with pytest.raises(FileExistsError) as err:
        fit(make(), bright(), epochs=2 if resume else 1, out=out, resume=resume, **FAST)
    assert ".history.json.bak.tmp" in str(err.value) and ".last.pt.keep.tmp" in str(err.value)
    assert ours.name not in str(err.value)  # ours is not foreign ...
    assert snapshot(out) == before  # ... but nothing at all is removed from a folder that is not ours


def test_allow_foreign_removes_nothing_of_the_folder_it_was_let_into(tmp_path):
    out = tmp_path / "run"
    ours = ".best.pt.k1ll3d_x.tmp"
    _plant(out, {**LOOKALIKES, ours: b"half"})
    fit(make(), bright(), epochs=1, out=out, allow_foreign=True, **FAST)
    assert all((out / name).read_bytes() == content for name, content in LOOKALIKES.items())
    assert (out / ours).read_bytes() == b"half"  # not known to be ours: not removed either
    assert read_checkpoint(out / "last.pt")["epoch"] == 1


def test_an_owned_folder_loses_only_its_own_temporaries(tmp_path):
    out = tmp_path / "run"
    fit(make(), bright(), epochs=1, out=out, **FAST)
    _plant(out, {".history.csv.q_1w2e3r.tmp": b"half", ".rank1.pt.zzzzzzzz.tmp": b"half"})
    fit(make(), bright(), epochs=1, out=out, resume=True, **FAST)  # all its epochs done: claimed, not trained
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "history.csv", "history.json",
                                                    "last.pt"]


def test_a_persons_lock_file_is_neither_overwritten_nor_removed(tmp_path):
    out = tmp_path / "run"
    _plant(out, {".lock": b"my own lock notes"})
    with pytest.raises(FileExistsError, match=r"\.lock is a file that no lock of ours wrote"):
        fit(make(), bright(), epochs=1, out=out, allow_foreign=True, **FAST)
    assert (out / ".lock").read_bytes() == b"my own lock notes" and not (out / "last.pt").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_run_files_get_the_permissions_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        fit(make(), bright(), epochs=1, out=tmp_path / "run", **FAST)
    finally:
        os.umask(old)
    for path in (tmp_path / "run").iterdir():
        assert path.stat().st_mode & 0o777 == mode, path.name
