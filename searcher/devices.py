"""Devices: which GPU and how many CPU threads each worker gets, and TensorFlow's runtime setup.

The parent plans without importing TensorFlow (~6 s, and it would start CUDA in a process that
never trains). A placement reaches its worker as environment variables, because visible GPUs and
thread pools are fixed once TF's runtime starts; the worker then calls configure_tensorflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from searcher.errors import UserError

log = logging.getLogger(__name__)

MAX_DEFAULT_CPU_WORKERS = 4
DEBUG_ENV = "SEARCHER_DEBUG"  # set by `searcher --debug`; workers and child processes inherit it
WORKER_INDEX_ENV = "SEARCHER_WORKER_INDEX"
# Where schedulers number the copies of one job: Slurm job arrays, Kubernetes Indexed Jobs.
_SCHEDULER_INDEX_ENVS = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")
ALLOW_CPU_FALLBACK_ENV = "SEARCHER_ALLOW_CPU_FALLBACK"  # "1": a worker given a GPU TF cannot see trains on the CPU
# Slurm names a job's GPUs here too; "NoDevFiles" is what it sets for gres without device files.
_SLURM_GPU_ENVS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
# TensorFlow's C++ start-up lines on a CPU host. They are written to fd 2 before absl's logging
# starts, so TF_CPP_MIN_LOG_LEVEL does not stop them (TF 2.21); "failed call to cuInit" reads
# like a failure and only means there is no GPU.
_STARTUP_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|^I\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "
    r"|^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"
)
_NO_GPU_NOISE = re.compile(r"^E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")
_NVIDIA_SMI_TIMEOUT = 10.0  # seconds: a wedged driver can hang nvidia-smi, and launch must not hang too


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the GPU ids this host offers, found without TensorFlow; ``[]`` if none or on any failure.

    Args:
        environ: Where to read ``CUDA_VISIBLE_DEVICES`` and ``PATH``; ``os.environ`` when None.
    """
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:  # the user already chose; "" or "-1" means no GPU
        return _parse_visible_devices(env["CUDA_VISIBLE_DEVICES"])
    return _query_nvidia_smi(env.get("PATH"))


def _parse_visible_devices(value: str) -> list[str]:
    # CUDA stops at the first invalid entry, so "-1" or "" hides it and everything after it.
    # Entries are kept verbatim: they may be GPU/MIG UUIDs, which CUDA_VISIBLE_DEVICES accepts.
    ids: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-") or item == "NoDevFiles":
            break
        ids.append(item)
    return ids


def _query_nvidia_smi(path: str | None) -> list[str]:
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return []
    try:
        result = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, errors="replace", timeout=_NVIDIA_SMI_TIMEOUT, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        # A driver/library mismatch makes nvidia-smi exit non-zero: plan CPU workers rather than fail.
        stderr = (getattr(e, "stderr", None) or "").strip()
        log.warning("nvidia-smi failed, planning CPU-only workers: %s %s", e, stderr)
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip().isdecimal()]


def worker_index_from_env(environ: Mapping[str, str]) -> int:
    """Return a worker's index when ``--worker-index`` is not given; 0 when nothing names one.

    Read from SEARCHER_WORKER_INDEX, else the scheduler's copy number: ``SLURM_ARRAY_TASK_ID``
    (a job array task) or ``JOB_COMPLETION_INDEX`` (a Kubernetes Indexed Job's pod).

    Raises:
        UserError: the variable holds something other than a whole number >= 0.
    """
    for name in (WORKER_INDEX_ENV, *_SCHEDULER_INDEX_ENVS):
        value = environ.get(name, "").strip()
        if value:
            if not value.isdecimal():
                raise UserError(f"{name}: expected a worker index (a whole number >= 0), got {value!r}")
            return int(value)
    return 0


def assigned_gpu(environ: Mapping[str, str]) -> str | None:
    """Return the GPU ids a scheduler gave this process (``"0"``, ``"0,1"``), or None for none.

    ``CUDA_VISIBLE_DEVICES`` decides when set (``""``, ``"-1"`` or ``"NoDevFiles"``: none);
    else Slurm's ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``.
    """
    for name in ("CUDA_VISIBLE_DEVICES", *_SLURM_GPU_ENVS):
        if name in environ:
            return ",".join(_parse_visible_devices(environ[name])) or None
    return None


def cpu_fallback_allowed(environ: Mapping[str, str]) -> bool:
    """Whether a worker given a GPU that TensorFlow cannot see may train on the CPU instead."""
    return environ.get(ALLOW_CPU_FALLBACK_ENV, "").strip().lower() in ("1", "true", "yes")


def parse_gpu_list(text: str) -> list[str]:
    """Parse ``--gpus 0,2`` into ``["0", "2"]``.

    Args:
        text: The flag's value: comma-separated GPU indices as nvidia-smi numbers them.
    """
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdecimal() for item in items):  # also rejects "", "0,,2" and "-1"
        raise UserError(f"--gpus: expected a comma-separated list of GPU indices like 0,2, got {text!r}")
    gpus = [str(int(item)) for item in items]  # "02" -> "2"
    if len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus: each GPU may be listed once (share one with --workers-per-gpu), got {text!r}")
    return gpus


@dataclass(frozen=True)
class WorkerPlacement:
    """Where one worker runs: its GPU (``None``: CPU only) and its TensorFlow thread pools."""

    index: int
    gpu: str | None  # value for CUDA_VISIBLE_DEVICES
    intra_op_threads: int
    inter_op_threads: int

    def env(self) -> dict[str, str]:
        """Return the environment variables to set in the worker process before it starts."""
        env = {
            # "" rather than unset: unset would let a CPU worker on a GPU host grab every GPU.
            "CUDA_VISIBLE_DEVICES": self.gpu if self.gpu is not None else "",
            # TensorFlow sizes its pools from these at start-up; configure_tensorflow sets them again.
            "TF_NUM_INTRAOP_THREADS": str(self.intra_op_threads),
            "TF_NUM_INTEROP_THREADS": str(self.inter_op_threads),
            # oneDNN's OpenMP pool ignores TF's settings; without this each worker would use every core.
            "OMP_NUM_THREADS": str(self.intra_op_threads),
            "TF_CPP_MIN_LOG_LEVEL": "2",  # TF's C++ INFO/WARNING; TF 2.21 still prints a few start-up lines
        }
        if self.gpu is not None:
            # Without memory growth the first worker on a GPU takes all its memory and the others OOM.
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
            # Number GPUs as nvidia-smi and --gpus do (PCI bus), not CUDA's default fastest-first.
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

    def describe(self) -> str:
        """Return a short phrase for the console, like ``GPU 2, 4 intra-op threads``."""
        where = f"GPU {self.gpu}" if self.gpu is not None else "CPU"
        return f"{where}, {self.intra_op_threads} intra-op thread{'' if self.intra_op_threads == 1 else 's'}"

    @classmethod
    def from_env(cls, index: int, environ: Mapping[str, str]) -> WorkerPlacement:
        """Read back the placement a worker was started with (see :meth:`env`).

        A worker started by hand may lack the variables: it then owns the host's cores, and
        ``gpu`` is None when neither ``CUDA_VISIBLE_DEVICES`` nor Slurm names a GPU
        (:func:`assigned_gpu`).

        Args:
            index: The worker's index, for log lines.
            environ: The worker's environment, usually ``os.environ``.
        """
        gpu = assigned_gpu(environ)
        cores = os.cpu_count() or 1
        intra = _env_threads(environ, "TF_NUM_INTRAOP_THREADS", cores)
        return cls(index, gpu, intra, _env_threads(environ, "TF_NUM_INTEROP_THREADS", min(2, cores)))


def _env_threads(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if value.isdecimal() and int(value) >= 1:
        return int(value)
    if value:
        log.warning("%s: expected a thread count >= 1, got %r; using %d", name, value, default)
    return default


def default_cpu_workers(cpu_count: int) -> int:
    """Return the CPU-only default worker count: half the cores, 1 to 4.

    Two threads per worker keep each trial fast while trials run in parallel. Past 4 workers,
    each holding TensorFlow and a copy of the data, memory runs out first, and more trials in
    flight leave the constant-liar TPE guessing more.

    Args:
        cpu_count: Cores on the host.
    """
    return min(MAX_DEFAULT_CPU_WORKERS, max(1, cpu_count // 2))


def plan_workers(n_workers: int | None, *, gpus: Sequence[str], workers_per_gpu: int = 1,
                 cpu_count: int) -> list[WorkerPlacement]:
    """Place ``n_workers`` workers round-robin on ``gpus``, or on the CPU cores when there are none.

    Args:
        n_workers: ``--workers``; None: ``len(gpus) * workers_per_gpu``, or
            :func:`default_cpu_workers` without GPUs. More is allowed (see :func:`plan_warning`).
        gpus: GPU ids from :func:`detect_gpus` or :func:`parse_gpu_list`; empty for CPU only.
        workers_per_gpu: ``--workers-per-gpu``.
        cpu_count: Cores on the host, split evenly between the workers.
    """
    _check_at_least_one("--workers-per-gpu", workers_per_gpu)
    cores = max(1, cpu_count)
    if gpus:
        n = len(gpus) * workers_per_gpu if n_workers is None else n_workers
        _check_at_least_one("--workers", n)
        intra = max(1, cores // n)
        # The GPU does the math; 2 inter-op threads let input feeding overlap kernel launches.
        return [WorkerPlacement(i, gpus[i % len(gpus)], intra, min(2, intra)) for i in range(n)]
    n = default_cpu_workers(cores) if n_workers is None else n_workers
    _check_at_least_one("--workers", n)
    # inter=1: then N workers use N * intra <= cores threads whenever N <= cores.
    return [WorkerPlacement(i, None, max(1, cores // n), 1) for i in range(n)]


def _check_at_least_one(flag: str, value: int) -> None:
    if value < 1:
        raise UserError(f"{flag}: must be >= 1, got {value}")


def plan_warning(placements: Sequence[WorkerPlacement], *, gpus: Sequence[str], workers_per_gpu: int,
                 cpu_count: int) -> str | None:
    """Return a one-line warning when the plan oversubscribes the GPUs or the cores, else None.

    Args:
        placements: What :func:`plan_workers` returned for ``gpus``, ``workers_per_gpu``, ``cpu_count``.
    """
    n = len(placements)
    if gpus and n > len(gpus) * workers_per_gpu:
        return (f"--workers {n} is more than {len(gpus)} GPU(s) x --workers-per-gpu {workers_per_gpu}: "
                f"up to {-(-n // len(gpus))} workers share a GPU")
    if not gpus and n > cpu_count:
        return f"--workers {n} is more than the {cpu_count} CPU cores: the workers will slow each other down"
    return None


@dataclass(frozen=True)
class RuntimeOptions:
    """The spec's runtime switches for TensorFlow."""

    mixed_precision: bool = False
    xla: bool = False  # applied by the model builder as compile(jit_compile=...); only reported here


@dataclass(frozen=True)
class TrainingRuntime:
    """How a trial trains beyond its config: XLA, mixed precision, TensorFlow's thread pools.

    The one place every call of ``objective.train`` takes them from. A worker builds it from
    the spec and its placement and records it on each trial (user attr ``runtime``);
    ``retrain``, ``replay``, ``confirm`` and ``init`` read it back and apply it, so a replay on
    the same device trains as the trial did (Keras' default ``jit_compile="auto"`` would turn
    XLA on whenever a GPU is visible, and thread counts change float sums).
    """

    xla: bool = False
    mixed_precision: bool = False
    intra_op_threads: int | None = None  # None: TensorFlow's default for this host
    inter_op_threads: int | None = None

    ATTR = "runtime"

    @classmethod
    def from_spec(cls, runtime: Any, placement: WorkerPlacement | None = None) -> TrainingRuntime:
        """The spec's ``runtime`` switches, with a worker's thread counts when placed."""
        return cls(xla=runtime.xla, mixed_precision=runtime.mixed_precision,
                   intra_op_threads=placement.intra_op_threads if placement else None,
                   inter_op_threads=placement.inter_op_threads if placement else None)

    def to_dict(self, *, n_visible_gpus: int = 0) -> dict[str, Any]:
        """What a trial records: the switches and the dtype policy they gave on its device."""
        return {"xla": self.xla, "mixed_precision": self.mixed_precision,
                "precision": compute_dtype_policy(self, n_visible_gpus),
                "intra_op_threads": self.intra_op_threads, "inter_op_threads": self.inter_op_threads}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> TrainingRuntime:
        """Read back ``to_dict``; None (a trial stored before runtimes were recorded) is how
        workers trained then: XLA off, float32."""
        raw = raw or {}
        return cls(xla=bool(raw.get("xla", False)), mixed_precision=bool(raw.get("mixed_precision", False)),
                   intra_op_threads=raw.get("intra_op_threads"), inter_op_threads=raw.get("inter_op_threads"))

    def placement(self, environ: Mapping[str, str] | None = None) -> WorkerPlacement:
        """This process's placement with the recorded thread counts (a process that is not a worker)."""
        base = WorkerPlacement.from_env(0, os.environ if environ is None else environ)
        return WorkerPlacement(0, base.gpu, self.intra_op_threads or base.intra_op_threads,
                               self.inter_op_threads or base.inter_op_threads)

    def thread_env(self) -> dict[str, str]:
        """Environment variables that size TensorFlow's pools at import (set before it is imported)."""
        env = {}
        if self.intra_op_threads:
            env.update(TF_NUM_INTRAOP_THREADS=str(self.intra_op_threads), OMP_NUM_THREADS=str(self.intra_op_threads))
        if self.inter_op_threads:
            env["TF_NUM_INTEROP_THREADS"] = str(self.inter_op_threads)
        return env


def apply_runtime(runtime: TrainingRuntime, *, tf: Any = None, keras: Any = None) -> str:
    """Set this process up as ``runtime`` says (threads, dtype policy) before it trains; one log line.

    For the processes that train outside a worker: retrain, replay, confirm's runs, init.
    """
    os.environ.update(runtime.thread_env())
    return configure_tensorflow(runtime.placement(), runtime, tf=tf, keras=keras,
                                allow_cpu_fallback=cpu_fallback_allowed(os.environ))


def compute_dtype_policy(options: RuntimeOptions | TrainingRuntime, n_visible_gpus: int) -> str:
    """Return the Keras dtype policy: ``mixed_float16`` only when asked for and a GPU is visible.

    Args:
        options: The runtime switches.
        n_visible_gpus: GPUs TensorFlow sees in this process (float16 math is slow on CPUs).
    """
    return "mixed_float16" if options.mixed_precision and n_visible_gpus > 0 else "float32"


def import_tensorflow() -> ModuleType:
    """Import TensorFlow and list its GPUs without its C++ start-up lines on stderr.

    Every process that trains calls this before anything imports TensorFlow or Keras. Other
    stderr output of the import is passed through; with ``searcher --debug`` (DEBUG_ENV)
    nothing is filtered. On a host with GPUs a failing cuInit is kept: there it is an error.
    """
    if "tensorflow" in sys.modules or os.environ.get(DEBUG_ENV):
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # INFO and WARNING once absl's logging is up
    noise = [_STARTUP_NOISE] if detect_gpus() else [_STARTUP_NOISE, _NO_GPU_NOISE]
    with _filter_stderr(noise):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA starts here: its cuInit line comes now
    return tf


@contextlib.contextmanager
def _filter_stderr(patterns: Sequence[re.Pattern[str]]) -> Iterator[None]:
    """Collect what is written to fd 2 (C++ included), then write back the lines no pattern matches."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(p.search(line.rstrip("\n")) for p in patterns)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def configure_tensorflow(placement: WorkerPlacement, options: RuntimeOptions | TrainingRuntime, *, tf: Any = None,
                         keras: Any = None, allow_cpu_fallback: bool = False) -> str:
    """Set threads, GPU memory growth and the dtype policy; return one log line saying what was done.

    Call it in the worker after its environment holds ``placement.env()``, before any TF op.

    Args:
        placement: This worker's placement (``WorkerPlacement.from_env`` in the worker).
        options: The runtime switches.
        tf: The ``tensorflow`` module; imported here when None (tests pass a fake).
        keras: The ``keras`` module; imported here when None and needed.
        allow_cpu_fallback: Train on the CPU when the assigned GPU is not visible to TensorFlow.

    Raises:
        UserError: a GPU was assigned, TensorFlow sees none and ``allow_cpu_fallback`` is off:
            a worker would otherwise hold a GPU allocation and train many times slower.
    """
    if tf is None:
        tf = import_tensorflow()
    threads = _set_threads(tf, placement)
    gpus = tf.config.list_physical_devices("GPU")  # lists hardware without starting the runtime
    if not gpus and placement.gpu is not None and not allow_cpu_fallback:
        raise UserError(
            f"GPU {placement.gpu} assigned but TensorFlow sees no GPU: its CUDA libraries are missing or do not "
            "match the driver (install them with pip install 'searcher[gpu]'); to train on the CPU anyway, set "
            f"{ALLOW_CPU_FALLBACK_ENV}=1")
    device = _set_memory_growth(tf, gpus, placement)
    policy = compute_dtype_policy(options, len(gpus))
    if policy != "float32":
        if keras is None:
            import keras
        keras.mixed_precision.set_global_policy(policy)
    precision = f"precision {policy}"
    if options.mixed_precision and policy == "float32":
        precision += " (mixed precision off: no GPU)"
    return f"worker {placement.index}: {device}, {precision}, XLA {'on' if options.xla else 'off'}, {threads}"


def _set_threads(tf: Any, placement: WorkerPlacement) -> str:
    text = f"threads intra={placement.intra_op_threads} inter={placement.inter_op_threads}"
    try:
        tf.config.threading.set_intra_op_parallelism_threads(placement.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(placement.inter_op_threads)
    except RuntimeError as e:  # the runtime started before us; TF_NUM_*_THREADS from env() still held
        log.warning("thread counts not set: %s", e)
        return f"{text} (not set: TensorFlow runtime already initialised)"
    return text


def _set_memory_growth(tf: Any, gpus: Sequence[Any], placement: WorkerPlacement) -> str:
    if not gpus:
        if placement.gpu is not None:  # only with the CPU fallback allowed (configure_tensorflow)
            return f"CPU (GPU {placement.gpu} assigned but TensorFlow sees no GPU: {ALLOW_CPU_FALLBACK_ENV} set)"
        return "CPU (no GPU visible)"
    where = f"GPU {placement.gpu}" if placement.gpu is not None else f"{len(gpus)} GPU(s)"
    try:
        for dev in gpus:
            tf.config.experimental.set_memory_growth(dev, True)
    except RuntimeError as e:  # too late once the runtime started; TF_FORCE_GPU_ALLOW_GROWTH still applies
        log.warning("GPU memory growth not set: %s", e)
        return f"{where} (memory growth not set: TensorFlow runtime already initialised)"
    return f"{where} (memory growth on)"


LOCK_DIR_ENV = "SEARCHER_LOCK_DIR"


def claim_gpu(choice: str, *, gpus: Sequence[str], lock_dir: str | os.PathLike[str]) -> tuple[str, Any]:
    """Lock one GPU for this worker process; return its id and the open lock file.

    Several worker containers that each see every GPU (``docker compose --scale``) use
    this to spread out: ``choice`` "auto" takes the first GPU nobody holds, a number
    takes that GPU. The lock is an ``flock`` on ``lock_dir/gpu-<id>.lock``, released by
    the kernel when the process exits, however it exits; keep the returned file open.

    Raises:
        UserError: no GPU is visible, the asked one does not exist, or all are taken.
    """
    import fcntl
    from pathlib import Path

    if not gpus:
        raise UserError("--gpu: no GPU is visible (nvidia-smi found none, or CUDA_VISIBLE_DEVICES is empty)")
    if choice != "auto" and choice not in gpus:
        raise UserError(f"--gpu: expected auto or one of {', '.join(gpus)}, got {choice!r}")
    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for gpu in gpus if choice == "auto" else [choice]:
        handle = open(folder / f"gpu-{gpu}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return gpu, handle
    taken = f"all {len(gpus)} GPUs are" if choice == "auto" else f"GPU {choice} is"
    raise UserError(f"--gpu: {taken} taken by other workers (locks in {folder}); scale workers to the GPU count")
