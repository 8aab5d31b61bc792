"""One command started twice on one output: a lock file that names its holder.

``cache-cues``, ``train``, ``train-supervised``, ``pseudo-label`` and ``grid`` hold
``<OUT>.lock`` (beside the output file or run directory) while they run: a JSON object with the
holder's host, pid, process start time, command and start date. A second command on the same
output stops at once with one error naming the other process. A lock left by a process that is
no longer running on *this* host is taken over, with a line saying so; a lock from another host
(a shared cluster filesystem) is never taken over: the error says which file to delete once that
job is known to be gone.

Under ``torchrun`` the launch holds one lock: the process of global rank 0 (``RANK``, else
``LOCAL_RANK``) takes it, the other ranks take none. SIGTERM (a cluster's time limit, ``kill``)
releases the lock on the way out. The Snakemake shard stages (``proposals-shard``,
``seeds-shard``, ``merge-cues``) take no lock: Snakemake already runs each job once.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import PDSLError


class LockError(PDSLError):
    """The output is in use by another process."""


def lock_path(out) -> Path:
    """``<out>.lock`` beside the output file or directory."""
    out = Path(os.path.abspath(Path(out).expanduser()))
    return out.with_name(out.name + ".lock")


def is_launch_leader(env=None) -> bool:
    """True unless this process is a non-zero rank of a torchrun launch."""
    env = os.environ if env is None else env
    rank = env.get("RANK", env.get("LOCAL_RANK"))
    try:
        return rank is None or int(rank) == 0
    except ValueError:
        return True


def _start_time(pid: int):
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_running(pid: int, start=None) -> bool:
    """Whether ``pid`` runs on this host (and, where ``start`` is known, is the same process)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                          # another user's process: alive
    except (OverflowError, ValueError):
        return False
    if start is not None:
        now = _start_time(int(pid))
        return now is None or now == start            # a recycled pid is another process
    return True


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _describe(d: dict) -> str:
    return (f"pid {d.get('pid', '?')} on host {d.get('host', '?')} ({d.get('command', '?')}, "
            f"since {d.get('started', '?')})")


def acquire(out, command: str, echo=None) -> Path | None:
    """Take the lock of ``out`` for ``command``; return its path (None: a non-leader rank).

    Raises :class:`LockError` naming the holder if another live process has it."""
    if not is_launch_leader():
        return None
    echo = echo or (lambda m: print(m, file=sys.stderr, flush=True))
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    me = {"host": host, "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
          "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read(path)
            if other is None:
                continue                              # released meanwhile: try again
            if not other:                             # being written: give it a moment
                time.sleep(0.05)
                other = _read(path)
                if other is None:
                    continue
            if not other or other.get("host") != host:
                raise LockError(f"{out} is in use by {_describe(other or {})}: another command "
                                f"is writing it. If that job is gone, delete {path}") from None
            if is_running(other.get("pid", -1), other.get("pid_start")):
                raise LockError(f"{out} is in use by {_describe(other)}: wait for it or stop "
                                f"it (kill {other.get('pid')}); two commands on one output "
                                f"would overwrite each other") from None
            if _remove_stale(path, other):
                echo(f"{command}: took over the lock {path} of {_describe(other)}, which is no "
                     f"longer running")
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise LockError(f"{out}: could not take the lock {path} (other commands keep taking it)")


def _remove_stale(path: Path, seen: dict) -> bool:
    """Move the stale lock away atomically; put it back if it is not the one ``seen`` (a live
    process took the lock in between). True if the stale lock was removed."""
    moved = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return False
    if _read(moved) != seen:
        try:
            os.link(moved, path)
        except FileExistsError:
            pass
        moved.unlink(missing_ok=True)
        return False
    moved.unlink(missing_ok=True)
    return True


def release(path: Path | None) -> None:
    """Remove the lock if this process holds it."""
    if path is not None and (_read(path) or {}).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def output_lock(out, command: str, echo=None):
    """Hold the lock of ``out`` while the block runs (see the module docstring)."""
    path = acquire(out, command, echo)
    previous = None
    if path is not None and threading.current_thread() is threading.main_thread():
        owner = os.getpid()

        def on_term(signum, frame):
            if os.getpid() != owner:                  # a forked child: the default action
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield path
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        release(path)
