"""A private single-node SLURM cluster for tests: munged, slurmctld and slurmd on localhost.

Everything lives in one temporary directory: the munge key and socket, slurm.conf and gres.conf,
the daemons' state, spool, pid and log files, and a text job completion log
(``JobCompType=jobcomp/filetxt``, no slurmdbd: ``sacct`` answers "accounting storage is
disabled", so job states come from ``squeue``/``scontrol``, which keep finished jobs for
``MinJobAge`` seconds, and from the completion log). The controller and slurmd listen on free
ports picked at start, and every client command gets ``SLURM_CONF`` pointing at this cluster's
file, so nothing here talks to another scheduler on the machine. The node has the machine's CPUs
and memory (``slurmd -C``) and two declared GPUs backed by plain files: a GPU job is scheduled
and its step started, and torch still sees no CUDA device in it.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
DAEMONS = ("munged", "slurmctld", "slurmd")
MARKER = "PDSL_TEST_SLURM_CLUSTER"  # set in every process the cluster starts, to find them again


def missing_programs() -> list[str]:
    return [p for p in DAEMONS + CLIENTS + ("munge",) if shutil.which(p) is None]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_hardware() -> str:
    """slurmd's view of this machine: ``CPUs=.. Boards=.. ... RealMemory=..``."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True,
                          timeout=30).stdout.splitlines()[0]
    return re.sub(r"^NodeName=\S+\s*", "", line)


class Cluster:
    """``start()`` brings the cluster up (or raises with the daemons' logs); ``stop()`` cancels
    its jobs and stops every process it started, also those of jobs still running."""

    def __init__(self):
        # not under pytest's 0700 tmp dirs: munged wants its socket's directory open to all
        self.dir = Path(tempfile.mkdtemp(prefix="pdsl-slurm-"))
        self.dir.chmod(0o755)
        self.conf = self.dir / "slurm.conf"
        self.jobcomp = self.dir / "jobcomp.log"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), MARKER: str(self.dir)}
        self.hardware = _node_hardware()
        self.cpus = int(re.search(r"CPUs=(\d+)", self.hardware).group(1))
        self.memory_mb = int(re.search(r"RealMemory=(\d+)", self.hardware).group(1))

    # -- start -----------------------------------------------------------------------------------
    def start(self):
        d = self.dir
        for sub in ("state", "spool", "bin"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = d / "munge.sock"
        self._spawn("munged", ["munged", "-F", "--num-threads=4", f"--socket={sock}",
                               f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
                               f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"])
        self._wait(lambda: subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True)
                   .returncode == 0, "munged")
        ctld_port, slurmd_port = _free_ports(2)
        for i in range(2):
            (d / f"fake-gpu{i}").touch()
        (d / "gres.conf").write_text(f"AutoDetect=off\nNodeName=localhost Name=gpu "
                                     f"File={d}/fake-gpu[0-1]\n")
        self.conf.write_text("\n".join([
            "ClusterName=pdsltest", "SlurmctldHost=localhost", "SlurmUser=root",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'slurmctld.log'}", f"SlurmdLogFile={d / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "ReturnToService=2", "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            f"JobCompType=jobcomp/filetxt", f"JobCompLoc={self.jobcomp}",
            "MinJobAge=900",  # finished jobs stay in squeue/scontrol for the status checks
            "GresTypes=gpu",
            f"NodeName=localhost {self.hardware} Gres=gpu:2 State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
        # The jobstep executor runs each job under `srun` with every SLURM_ variable but a few
        # removed, SLURM_CONF included: this srun puts it back (a site whose slurm.conf is found
        # only through SLURM_CONF needs the same, see README)
        shim = d / "bin" / "srun"
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {shutil.which("srun")} "$@"\n')
        shim.chmod(0o755)
        self.env["PATH"] = f"{d / 'bin'}:{self.env['PATH']}"
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(lambda: self.cmd("sinfo", "-h", "-n", "localhost", "-o", "%t").strip()
                   == "idle", "an idle node")

    def _spawn(self, name, argv):
        log = open(self.dir / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    def _wait(self, ready, what, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster never reached {what}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {f.name}\n" + "\n".join(f.read_text(errors="replace")
                                                     .splitlines()[-15:])
                         for f in sorted(self.dir.glob("*.out")) + sorted(self.dir.glob("*.log")))

    # -- use -------------------------------------------------------------------------------------
    def cmd(self, *argv, check=False) -> str:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr}")
        return r.stdout

    def jobs(self, name: str) -> dict[str, dict]:
        """SLURM job id -> the scheduler's record (``scontrol show job`` fields) of every job
        named ``name`` (the executor names each job after its run id)."""
        out = {}
        for line in self.cmd("scontrol", "-o", "show", "job", check=True).splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if fields.get("JobName") == name:
                out[fields["JobId"]] = fields
        return out

    def completions(self) -> dict[str, dict]:
        """SLURM job id -> its line in the job completion log."""
        text = self.jobcomp.read_text() if self.jobcomp.exists() else ""
        return {f["JobId"]: f for f in (dict(re.findall(r"(\w+)=(\S*)", line))
                                        for line in text.splitlines()) if "JobId" in f}

    # -- stop ------------------------------------------------------------------------------------
    def stop(self):
        if self.procs and all(p.poll() is None for p in self.procs):
            ids = self.cmd("squeue", "-h", "-o", "%i").split()
            if ids:
                self.cmd("scancel", *ids)
                end = time.monotonic() + 20
                while time.monotonic() < end and self.cmd("squeue", "-h", "-t", "R,CG", "-o", "%i"):
                    time.sleep(0.5)
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self._kill_leftovers()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftovers(self):
        """Kill what is still running of the processes this cluster started (job steps,
        slurmscriptd): those with this cluster's marker in their environment."""
        mark = f"{MARKER}={self.dir}".encode()
        for env in Path("/proc").glob("[0-9]*/environ"):
            try:
                if mark in env.read_bytes().split(b"\0") and int(env.parent.name) != os.getpid():
                    os.kill(int(env.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue
