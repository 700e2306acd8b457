"""finetuner.io: every output is written to a hidden temp file beside it and renamed over it, so
a crash, Ctrl-C or SIGKILL leaves the previous output (or none), never a half-written one.

The stages killed mid-way (finetune, preprocess) are in tests/test_robustness_faults.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ignored
from finetuner import io as io_module
from finetuner.io import atomic_path, read_csv, remove_stale_temps, write_csv, write_json


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- what is written -------------------------------------------------------------------------

def test_write_json_keeps_the_key_order_and_ends_with_a_newline(tmp_path):
    data = {"zeta": 1, "alpha": [0.5, "été"], "nested": {"b": None, "a": True}}
    write_json(tmp_path / "metrics.json", data)
    text = (tmp_path / "metrics.json").read_text(encoding="utf-8")
    assert json.loads(text) == data and list(json.loads(text)) == ["zeta", "alpha", "nested"]
    assert text == json.dumps(data, indent=2) + "\n"


def test_write_csv_and_read_csv_round_trip_with_unix_newlines(tmp_path):
    rows = [("a/1.png", "ant", 3), ("b, with comma.jpg", 'say "bee"', 0), ("é/ü.png", "ü", 1)]
    write_csv(tmp_path / "split.csv", ["path", "label", "n"], rows)
    raw = (tmp_path / "split.csv").read_bytes()
    assert raw.startswith(b"path,label,n\n") and b"\r" not in raw
    assert read_csv(tmp_path / "split.csv") == [
        {"path": p, "label": label, "n": str(n)} for p, label, n in rows]


def test_missing_parent_folders_are_created(tmp_path):
    write_json(tmp_path / "metrics" / "deep" / "eval.json", {"ok": 1})
    assert json.loads((tmp_path / "metrics" / "deep" / "eval.json").read_text()) == {"ok": 1}


# --- atomicity ------------------------------------------------------------------------------

def test_the_output_changes_only_when_the_block_ends(tmp_path):
    target = tmp_path / "eval.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing at the output path is half-new
        assert tmp.parent == tmp_path and tmp.name.startswith(f".eval.json.tmp-{os.getpid()}-")
        assert ignored(tmp.name)  # git-ignored, so `dvc exp run` does not see it either
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("interrupt", [RuntimeError("boom"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_an_error_or_ctrl_c_inside_keeps_the_previous_file_and_leaves_no_temp(tmp_path,
                                                                              interrupt):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(type(interrupt)):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise interrupt
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]


def test_an_error_inside_with_no_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_process_killed_while_writing_leaves_the_old_file_and_a_hidden_temp(tmp_path):
    target = tmp_path / "eval.json"
    write_json(target, {"accuracy": 0.5})
    before = target.read_bytes()
    code = ("import os, signal\nfrom finetuner.io import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_text('{\"accura')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    stale = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(stale) == 1 and stale[0].startswith(".eval.json.tmp-") and ignored(stale[0])
    write_json(target, {"accuracy": 0.75})  # the next write removes the dead process's temp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
    assert '"accuracy": 0.75' in target.read_text()


def test_the_content_is_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name the file behind a descriptor")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(io_module.os, "fsync", fsync)
    monkeypatch.setattr(io_module.os, "replace", replace)
    target = tmp_path / "eval.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert events == [("fsync", os.path.realpath(tmp)), ("replace", str(tmp), str(target)),
                      ("fsync", os.path.realpath(tmp_path))]


# --- folder outputs ---------------------------------------------------------------------------

def test_a_folder_output_is_replaced_as_a_whole(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "stale.npy").write_text("old")
    with atomic_path(target, directory=True) as tmp:
        assert tmp.is_dir() and (target / "stale.npy").exists()
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_the_old_folder_is_deleted_only_once_the_new_one_is_in_place(tmp_path, monkeypatch):
    """Deleting a big folder takes time: a crash then must not leave half of it at the path."""
    target = tmp_path / "prepared"
    target.mkdir()
    for name in ("meta.json", "train_images.npy"):
        (target / name).write_text("old")
    seen_while_deleting = []
    real_rmtree = io_module.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        seen_while_deleting.append({p.name: p.read_text() for p in target.iterdir()})
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(io_module.shutil, "rmtree", rmtree)
    with atomic_path(target, directory=True) as tmp:
        (tmp / "meta.json").write_text("new")
    assert seen_while_deleting == [{"meta.json": "new"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_a_folder_write_that_fails_keeps_the_old_folder_whole(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "meta.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "train_images.npy").write_bytes(b"half")
            raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["meta.json"]
    assert (target / "meta.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_a_linked_folder_output_is_replaced_and_the_link_target_left_alone(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not ours")
    target = tmp_path / "out" / "prepared"
    target.parent.mkdir()
    target.symlink_to(elsewhere, target_is_directory=True)
    with atomic_path(target, directory=True) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert not target.is_symlink() and [p.name for p in target.iterdir()] == ["meta.json"]
    assert (elsewhere / "keep.txt").read_text() == "not ours"
    assert [p.name for p in target.parent.iterdir()] == ["prepared"]


def test_a_killed_folder_write_is_cleaned_up_by_the_next_write(tmp_path):
    pid = dead_pid()
    (tmp_path / f".prepared.tmp-{pid}-abc").mkdir()  # killed while writing
    (tmp_path / f".prepared.tmp-{pid}-abc" / "train_images.npy").write_bytes(b"half")
    (tmp_path / f".prepared.old-{pid}-def").mkdir()  # killed between the two renames
    with atomic_path(tmp_path / "prepared", directory=True) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        with atomic_path(tmp_path / "folder", directory=True):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


# --- stale temps ------------------------------------------------------------------------------

def test_only_temps_of_dead_processes_are_removed(tmp_path):
    pid = dead_pid()
    (tmp_path / f".x.pt.tmp-{pid}-abc").write_text("partial")
    (tmp_path / f".x.pt.old-{pid}-def").mkdir()
    (tmp_path / f".x.pt.tmp-{os.getppid()}-ghi").write_text("someone is writing this")
    (tmp_path / f".x.pt.tmp-{os.getpid()}-mno").write_text("this process is writing this")
    (tmp_path / f".y.pt.tmp-{pid}-jkl").write_text("another output's temp")
    (tmp_path / f"x.pt.tmp-{pid}-pqr").write_text("not hidden: not one of ours")
    removed = remove_stale_temps(tmp_path / "x.pt")
    assert sorted(p.name for p in removed) == [f".x.pt.old-{pid}-def", f".x.pt.tmp-{pid}-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        f".x.pt.tmp-{os.getppid()}-ghi", f".x.pt.tmp-{os.getpid()}-mno",
        f".y.pt.tmp-{pid}-jkl", f"x.pt.tmp-{pid}-pqr"])


def test_no_stale_temps_in_a_missing_folder(tmp_path):
    assert remove_stale_temps(tmp_path / "missing" / "x.pt") == []


def test_json_outputs_are_strict_json_with_null_for_a_score_never_computed(tmp_path):
    path = tmp_path / "eval.json"
    io_module.write_json(path, {"best_val_acc": float("nan"), "ok": 0.5,
                                "members": [{"cv_loss": float("inf")}, (1.0, float("-inf"))]})

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"best_val_acc": None, "ok": 0.5, "members": [{"cv_loss": None}, [1.0, None]]}
