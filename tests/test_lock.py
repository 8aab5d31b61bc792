"""One command started twice on one output: the lock names the other process; a dead holder on
this host is taken over with a line; another host's lock is never taken; torchrun locks once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdsl.lock import LockError, acquire, is_launch_leader, lock_path, output_lock, release

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from pdsl.lock import output_lock\n"
        "with output_lock(sys.argv[1], 'cache-cues'):\n"
        "    print('held', flush=True); time.sleep(60)\n")


@pytest.fixture
def holder(tmp_path):
    """A subprocess holding the lock of tmp_path/cues.h5."""
    out = tmp_path / "cues.h5"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO,
                         stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout.readline().strip() == "held"
    yield out, p
    p.kill()
    p.wait()


def test_second_command_is_refused_naming_the_first(holder):
    out, p = holder
    host = socket.gethostname()
    with pytest.raises(LockError, match=rf"cues\.h5 is in use by pid {p.pid} on host {host} "
                                        rf"\(cache-cues, since .*kill {p.pid}"):
        acquire(out, "train")
    # SIGTERM (a cluster's time limit) releases the lock on the way out
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 128 + signal.SIGTERM
    assert not lock_path(out).exists()
    with output_lock(out, "cache-cues") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_dead_holder_on_this_host_is_taken_over_with_a_line(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                          "command": "train", "started": "yesterday"}))
    said = []
    path = acquire(out, "train", echo=said.append)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"took over the lock {path} of pid {dead.pid}" in said[0]
    assert "no longer running" in said[0]
    release(path)
    assert not path.exists()


def test_another_hosts_lock_is_never_taken(tmp_path):
    out = tmp_path / "grid"
    lock_path(out).write_text(json.dumps({"host": "node-17", "pid": 1, "command": "grid",
                                          "started": "today"}))
    with pytest.raises(LockError, match=rf"pid 1 on host node-17 \(grid.*If that job is gone, "
                                        rf"delete .*grid\.lock"):
        acquire(out, "grid", echo=lambda m: pytest.fail(m))
    assert json.loads(lock_path(out).read_text())["host"] == "node-17"


def test_torchrun_launch_holds_one_lock(tmp_path, monkeypatch):
    assert is_launch_leader({}) and is_launch_leader({"RANK": "0", "LOCAL_RANK": "0"})
    assert not is_launch_leader({"RANK": "3", "LOCAL_RANK": "1"})
    assert not is_launch_leader({"LOCAL_RANK": "1"})
    assert not is_launch_leader({"RANK": "2", "LOCAL_RANK": "0"})   # rank 0 of node 2
    monkeypatch.setenv("RANK", "1")
    with output_lock(tmp_path / "run", "train") as path:
        assert path is None and not lock_path(tmp_path / "run").exists()


@pytest.mark.parametrize("command,args,out", [
    ("cache-cues", ["--manifest", "m.json", "--out", "{o}"], "cues.h5"),
    ("train", ["--manifest", "m.json", "--cues", "c.h5", "--out", "{o}"], "run"),
    ("train-supervised", ["--manifest", "m.json", "--out", "{o}"], "run"),
    ("pseudo-label", ["--run", "r", "--manifest", "m.json", "--cues", "c.h5", "--out", "{o}"],
     "labels.json"),
    ("grid", ["--spec", "g.yaml", "--out", "{o}"], "grid")])
def test_each_long_command_refuses_a_second_start_on_its_output(holder, command, args, out):
    """The lock is taken before any input is read: the refusal comes at once, one Error line."""
    held, p = holder
    target = held if out == "cues.h5" else held.with_name(out)
    if target != held:          # hold the command's own output in this process
        path = acquire(target, "someone")
    r = subprocess.run([sys.executable, "cli.py", command,
                        *[a.replace("{o}", str(target)) for a in args]],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "is in use by pid" in lines[0]
    assert str(p.pid if target == held else os.getpid()) in lines[0]
    if target != held:
        release(path)
