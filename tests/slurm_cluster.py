"""A real one-node Slurm for the tests: munged, slurmctld and slurmd in the foreground, reaped on stop.

Everything lives under one folder (configuration, state, logs, munge key) and the daemons
listen on free ports, so it runs beside a site's Slurm and leaves nothing behind. The node
offers fake GPUs as generic resources: gres/gpu needs device files, and symlinks to
/dev/null are accepted, so ``--gres=gpu:1`` sets ``CUDA_VISIBLE_DEVICES`` and
``SLURM_JOB_GPUS`` as on a GPU node. ``cred_expire=10`` lets a requeued job start again
after ~11 s instead of the default 120 s. slurmctld checks time limits every 30 s, so a
``--signal=...@N`` arrives 0-30 s after it is due.

Needs the Debian packages slurmctld, slurmd, slurm-client and munge
(scripts/install-test-deps) and root, as slurmd runs jobs as their submitters.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from postgres_server import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (packages missing, not root, or a daemon did not come up)."""


def missing_reason() -> str | None:
    """Why this machine cannot run the test cluster, or None if it can."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin")
               is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): run scripts/install-test-deps "
                "(apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "the test Slurm needs root (slurmd runs jobs as their submitters)"
    return None


@dataclass(frozen=True)
class JobInfo:
    """One line of ``scontrol show job``, the fields the tests read."""

    job_id: str
    state: str
    reason: str
    restarts: int
    fields: dict[str, str]


class SlurmCluster:
    """munged + slurmctld + slurmd as child processes of the test session."""

    def __init__(self, root: Path, *, gpus: int = 2, cred_expire: int = 10) -> None:
        self.root, self.gpus, self.cred_expire = root, gpus, cred_expire
        self.conf = root / "etc" / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's client commands (and so for the jobs they submit)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60) -> None:
        t0 = time.monotonic()
        for sub in ("etc", "munge", "state", "spool", "log", "run", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)  # munged's socket folder must be o+x for non-root clients
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self._write_config()
        logs = self.root / "log"
        self._spawn(["munged", "-F", "--force", f"--socket={self.socket}", f"--key-file={key}",
                     f"--log-file={logs / 'munged.log'}", f"--pid-file={self.root / 'run' / 'munged.pid'}",
                     f"--seed-file={self.root / 'munge' / 'munged.seed'}", "--num-threads=2"], "munged")
        self._spawn(["slurmctld", "-D", "-f", str(self.conf)], "slurmctld")
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", self.host], "slurmd")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if dead := [name for name, p in self.processes.items() if p.poll() is not None]:
                raise SlurmUnavailable(f"{dead[0]} exited {self.processes[dead[0]].returncode}: {self.log_tail()}")
            state = self.run("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                self.start_seconds = time.monotonic() - t0
                return
            time.sleep(0.1)
        raise SlurmUnavailable(f"node {self.host} not idle after {timeout} s (state {state!r}): {self.log_tail()}")

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (slurmd first) and reap them."""
        t0 = time.monotonic()
        controller = self.processes.get("slurmctld")
        if controller is not None and controller.poll() is None:
            self.run("scancel", "--full", "--quiet", f"--user={os.getuid()}", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        self.stop_seconds = time.monotonic() - t0

    # --- clients ---------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=kwargs.pop("env", self.env), capture_output=True, text=True,
                                timeout=60, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}")
        return result

    def sbatch(self, *args: str, env: dict[str, str], cwd: Path) -> str:
        """Submit as a user does (the environment is exported to the job); return the job id."""
        return self.run("sbatch", "--parsable", *args, env={**env, "SLURM_CONF": str(self.conf)},
                        cwd=cwd).stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[JobInfo]:
        """``scontrol -d show job`` (GRES=gpu:1(IDX:0) included) for a job or every task of an array;
        a job is kept MinJobAge=300 s after its end."""
        out = self.run("scontrol", "-d", "-o", "show", "job", job_id, check=False).stdout
        result = []
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                result.append(JobInfo(fields["JobId"], fields.get("JobState", ""), fields.get("Reason", ""),
                                      int(fields.get("Restarts", "0") or 0), fields))
        return result

    def scancel(self, job_id: str) -> None:
        self.run("scancel", job_id)

    # --- set-up ----------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.root / "munge" / "munge.socket.2"

    def _spawn(self, command: list[str], name: str) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "ab")
        with out:
            self.processes[name] = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _write_config(self) -> None:
        # A fresh cluster every time: saved state would keep old jobs (and a drained node).
        for sub in ("state", "spool"):
            shutil.rmtree(self.root / sub)
            (self.root / sub).mkdir()
        hardware = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        memory = int(re.search(r"RealMemory=(\d+)", hardware)[1]) * 9 // 10  # slurmd refuses a node it sees as smaller
        hardware = re.sub(r"^NodeName=\S+ |RealMemory=\d+", "", hardware).strip()
        gres = ""
        gres_conf = self.root / "etc" / "gres.conf"
        if self.gpus:
            for i in range(self.gpus):
                device = self.root / "dev" / f"gpu{i}"
                device.unlink(missing_ok=True)
                device.symlink_to("/dev/null")  # gres/gpu needs a character device: a regular file is refused
            gres = f"Gres=gpu:{self.gpus}"
            gres_conf.write_text(f"AutoDetect=off\nNodeName={self.host} Name=gpu "
                                 f"File={self.root / 'dev'}/gpu[0-{self.gpus - 1}]\n")
        else:
            gres_conf.write_text("")
        r = self.root
        self.conf.write_text(f"""\
ClusterName=searchertest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire={self.cred_expire}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=10
InactiveLimit=0
MinJobAge=300
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 {hardware} RealMemory={memory} {gres} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log", "slurmctld.stdout", "slurmd.stdout"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)
