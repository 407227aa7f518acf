"""Devices: worker placement planned without TensorFlow, and TF runtime setup with faked GPUs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from searcher.devices import (
    RuntimeOptions,
    TrainingRuntime,
    apply_runtime,
    WorkerPlacement,
    assigned_gpu,
    compute_dtype_policy,
    configure_tensorflow,
    cpu_fallback_allowed,
    default_cpu_workers,
    detect_gpus,
    parse_gpu_list,
    plan_warning,
    plan_workers,
    worker_index_from_env,
)
from cli_process import HANG_GUARD
from searcher.errors import UserError

# --- planning ------------------------------------------------------------------------------


def test_one_worker_per_gpu_by_default():
    plan = plan_workers(None, gpus=["0", "1", "2", "3"], cpu_count=8)
    assert [p.gpu for p in plan] == ["0", "1", "2", "3"]
    assert [p.index for p in plan] == [0, 1, 2, 3]
    assert all(p.intra_op_threads == 2 and p.inter_op_threads == 2 for p in plan)
    assert plan_workers(4, gpus=["0", "1", "2", "3"], cpu_count=8) == plan


def test_workers_per_gpu_round_robins_over_the_chosen_gpus():
    plan = plan_workers(None, gpus=parse_gpu_list("0,2"), workers_per_gpu=2, cpu_count=16)
    assert [p.gpu for p in plan] == ["0", "2", "0", "2"]
    assert all(p.intra_op_threads == 4 for p in plan)
    assert plan_warning(plan, gpus=["0", "2"], workers_per_gpu=2, cpu_count=16) is None


def test_more_workers_than_gpu_slots_share_and_warn():
    plan = plan_workers(5, gpus=["0", "1"], cpu_count=2)
    assert [p.gpu for p in plan] == ["0", "1", "0", "1", "0"]
    assert all(p.intra_op_threads == 1 and p.inter_op_threads == 1 for p in plan)
    assert plan_warning(plan, gpus=["0", "1"], workers_per_gpu=1, cpu_count=2) == (
        "--workers 5 is more than 2 GPU(s) x --workers-per-gpu 1: up to 3 workers share a GPU")


@pytest.mark.parametrize(("cores", "workers", "intra"), [(2, 2, 1), (8, 3, 2), (8, 8, 1), (16, 4, 4), (1, 1, 1)])
def test_cpu_workers_split_the_cores(cores, workers, intra):
    plan = plan_workers(workers, gpus=[], cpu_count=cores)
    assert len(plan) == workers
    assert all(p.gpu is None and p.intra_op_threads == intra and p.inter_op_threads == 1 for p in plan)
    assert sum(p.intra_op_threads for p in plan) <= cores
    assert plan_warning(plan, gpus=[], workers_per_gpu=1, cpu_count=cores) is None


def test_more_cpu_workers_than_cores_get_one_thread_and_a_warning():
    plan = plan_workers(3, gpus=[], cpu_count=2)
    assert [p.intra_op_threads for p in plan] == [1, 1, 1]
    assert plan_warning(plan, gpus=[], workers_per_gpu=1, cpu_count=2) == (
        "--workers 3 is more than the 2 CPU cores: the workers will slow each other down")


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (4, 2), (8, 4), (64, 4)])
def test_cpu_default_is_half_the_cores_at_most_four(cores, expected):
    assert default_cpu_workers(cores) == expected
    plan = plan_workers(None, gpus=[], cpu_count=cores)
    assert len(plan) == expected and sum(p.intra_op_threads for p in plan) <= cores


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_workers": 0, "gpus": []}, "--workers: must be >= 1, got 0"),
    ({"n_workers": -2, "gpus": ["0"]}, "--workers: must be >= 1, got -2"),
    ({"n_workers": None, "gpus": ["0"], "workers_per_gpu": 0}, "--workers-per-gpu: must be >= 1, got 0"),
])
def test_plan_rejects_counts_below_one(kwargs, message):
    with pytest.raises(UserError, match=f"^{message}$"):
        plan_workers(cpu_count=4, **kwargs)


# --- the environment a worker starts with --------------------------------------------------


def test_gpu_worker_env_pins_one_gpu_with_memory_growth():
    placement = WorkerPlacement(index=1, gpu="2", intra_op_threads=4, inter_op_threads=2)
    assert placement.env() == {
        "CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": "4",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    assert placement.describe() == "GPU 2, 4 intra-op threads"


def test_cpu_worker_env_hides_every_gpu():
    placement = plan_workers(2, gpus=[], cpu_count=2)[0]
    env = placement.env()
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # set, not missing: unset would expose the host's GPUs
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in env
    assert env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert placement.describe() == "CPU, 1 intra-op thread"


def test_placement_round_trips_through_the_environment():
    for placement in (WorkerPlacement(3, "1", 4, 2), WorkerPlacement(0, None, 1, 1)):
        assert WorkerPlacement.from_env(placement.index, placement.env()) == placement


def test_hand_started_worker_owns_the_host(caplog):
    placement = WorkerPlacement.from_env(0, {"CUDA_VISIBLE_DEVICES": "0,1", "TF_NUM_INTRAOP_THREADS": "lots"})
    assert placement.gpu == "0,1"
    assert placement.intra_op_threads == (os.cpu_count() or 1)
    assert "TF_NUM_INTRAOP_THREADS: expected a thread count >= 1, got 'lots'" in caplog.text
    assert WorkerPlacement.from_env(0, {}).gpu is None


# --- finding GPUs without TensorFlow --------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("", []), ("-1", []), ("0,1", ["0", "1"]), (" 2 , 3 ", ["2", "3"]), ("1,-1,2", ["1"]),
    ("GPU-8f2c1d3e", ["GPU-8f2c1d3e"]),
])
def test_detect_gpus_honours_cuda_visible_devices(tmp_path, value, expected):
    _fake_nvidia_smi(tmp_path, "echo 0; echo 1; echo 2; echo 3")  # must not be consulted
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": value, "PATH": str(tmp_path)}) == expected


def test_detect_gpus_runs_nvidia_smi(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, 'test "$*" = "--query-gpu=index --format=csv,noheader" || exit 7\n'
                               "printf '0\\n1\\n\\n'")
    assert detect_gpus({"PATH": str(tmp_path)}) == ["0", "1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == ["0", "1"]


def test_detect_gpus_is_empty_when_nvidia_smi_fails(tmp_path, caplog):
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate' >&2; exit 9")
    assert detect_gpus({"PATH": str(tmp_path)}) == []
    assert "nvidia-smi failed" in caplog.text and "could not communicate" in caplog.text


def test_detect_gpus_is_empty_without_nvidia_smi(tmp_path):
    assert detect_gpus({"PATH": str(tmp_path)}) == []


def _fake_nvidia_smi(directory: Path, body: str) -> None:
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


# --- --gpus ---------------------------------------------------------------------------------


def test_parse_gpu_list():
    assert parse_gpu_list("0,2") == ["0", "2"]
    assert parse_gpu_list(" 1 , 03 ") == ["1", "3"]


@pytest.mark.parametrize("text", ["", "0,,2", "0,2,", "a", "-1", "0;1", "1.5"])
def test_parse_gpu_list_rejects_non_indices(text):
    with pytest.raises(UserError, match=r"^--gpus: expected a comma-separated list of GPU indices like 0,2, "
                                        rf"got '{text}'$"):
        parse_gpu_list(text)


def test_parse_gpu_list_rejects_repeats():
    with pytest.raises(UserError, match=r"^--gpus: each GPU may be listed once \(share one with "
                                        r"--workers-per-gpu\), got '0,1,0'$"):
        parse_gpu_list("0,1,0")


# --- configuring TensorFlow in the worker (faked) ------------------------------------------


class _FakeTF:
    """Records the tf.config calls configure_tensorflow makes; can refuse like a started runtime."""

    def __init__(self, n_gpus: int, *, started: bool = False):
        self.calls: list[tuple] = []
        self._gpus = [f"/physical_device:GPU:{i}" for i in range(n_gpus)]
        self._started = started
        self.config = self
        self.threading = self
        self.experimental = self

    def _record(self, *call: object) -> None:
        self.calls.append(call)

    def set_intra_op_parallelism_threads(self, n: int) -> None:
        if self._started:
            raise RuntimeError("Intra op parallelism cannot be modified after initialization.")
        self._record("intra", n)

    def set_inter_op_parallelism_threads(self, n: int) -> None:
        self._record("inter", n)

    def list_physical_devices(self, kind: str) -> list[str]:
        assert kind == "GPU"
        return self._gpus

    def set_memory_growth(self, device: str, enable: bool) -> None:
        if self._started:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self._record("memory_growth", device, enable)


class _FakeKeras:
    def __init__(self):
        self.policies: list[str] = []
        self.mixed_precision = self

    def set_global_policy(self, policy: str) -> None:
        self.policies.append(policy)


def test_two_gpus_with_mixed_precision():
    tf, keras = _FakeTF(n_gpus=2), _FakeKeras()
    line = configure_tensorflow(WorkerPlacement(1, "0,1", 4, 2), RuntimeOptions(mixed_precision=True, xla=True),
                                tf=tf, keras=keras)
    assert tf.calls == [("intra", 4), ("inter", 2), ("memory_growth", "/physical_device:GPU:0", True),
                        ("memory_growth", "/physical_device:GPU:1", True)]
    assert keras.policies == ["mixed_float16"]
    assert line == ("worker 1: GPU 0,1 (memory growth on), precision mixed_float16, XLA on, "
                    "threads intra=4 inter=2")


def test_mixed_precision_is_off_without_a_gpu():
    tf, keras = _FakeTF(n_gpus=0), _FakeKeras()
    line = configure_tensorflow(WorkerPlacement(0, None, 1, 1), RuntimeOptions(mixed_precision=True),
                                tf=tf, keras=keras)
    assert keras.policies == []  # stays float32: float16 math is slow on CPUs
    assert not [c for c in tf.calls if c[0] == "memory_growth"]
    assert line == ("worker 0: CPU (no GPU visible), precision float32 (mixed precision off: no GPU), "
                    "XLA off, threads intra=1 inter=1")


def test_assigned_gpu_that_tensorflow_cannot_see_stops_the_worker():
    with pytest.raises(UserError) as caught:
        configure_tensorflow(WorkerPlacement(2, "3", 2, 2), RuntimeOptions(), tf=_FakeTF(n_gpus=0), keras=_FakeKeras())
    message = str(caught.value)
    assert message.startswith("GPU 3 assigned but TensorFlow sees no GPU: its CUDA libraries are missing")
    assert "pip install 'searcher[gpu]'" in message and "SEARCHER_ALLOW_CPU_FALLBACK=1" in message
    assert "\n" not in message


def test_the_cpu_fallback_is_explicit():
    line = configure_tensorflow(WorkerPlacement(2, "3", 2, 2), RuntimeOptions(), tf=_FakeTF(n_gpus=0),
                                keras=_FakeKeras(), allow_cpu_fallback=True)
    assert line.startswith("worker 2: CPU (GPU 3 assigned but TensorFlow sees no GPU: "
                           "SEARCHER_ALLOW_CPU_FALLBACK set)")
    assert [cpu_fallback_allowed({"SEARCHER_ALLOW_CPU_FALLBACK": v}) for v in ("1", "true", "0", "")] == [
        True, True, False, False]
    assert not cpu_fallback_allowed({})


def test_a_cpu_worker_needs_no_fallback():
    for env in ({"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}, {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {}):
        placement = WorkerPlacement.from_env(0, env)
        assert placement.gpu is None, env
        line = configure_tensorflow(placement, RuntimeOptions(), tf=_FakeTF(n_gpus=0), keras=_FakeKeras())
        assert "CPU (no GPU visible)" in line


@pytest.mark.parametrize(("env", "expected"), [
    ({"CUDA_VISIBLE_DEVICES": "1"}, "1"),
    ({"CUDA_VISIBLE_DEVICES": "", "SLURM_JOB_GPUS": "0"}, None),  # set on purpose: no GPU
    ({"SLURM_JOB_GPUS": "2"}, "2"),
    ({"SLURM_STEP_GPUS": "0,1", "SLURM_JOB_GPUS": "0,1,2"}, "0,1"),
    ({"SLURM_JOB_GPUS": "NoDevFiles"}, None),
    ({}, None),
])
def test_the_gpu_a_scheduler_assigned(env, expected):
    assert assigned_gpu(env) == expected
    assert WorkerPlacement.from_env(0, env).gpu == expected


@pytest.mark.parametrize(("env", "expected"), [
    ({}, 0),
    ({"SLURM_ARRAY_TASK_ID": "3"}, 3),
    ({"JOB_COMPLETION_INDEX": "5"}, 5),
    ({"SEARCHER_WORKER_INDEX": "7", "SLURM_ARRAY_TASK_ID": "3", "JOB_COMPLETION_INDEX": "5"}, 7),
    ({"SLURM_ARRAY_TASK_ID": "", "JOB_COMPLETION_INDEX": "2"}, 2),
])
def test_worker_index_from_the_scheduler(env, expected):
    assert worker_index_from_env(env) == expected


def test_worker_index_that_is_not_a_number_names_the_variable():
    with pytest.raises(UserError, match=r"^SLURM_ARRAY_TASK_ID: expected a worker index .* got 'x'$"):
        worker_index_from_env({"SLURM_ARRAY_TASK_ID": "x"})


def test_runtime_already_started_is_reported_not_raised(caplog):
    tf, keras = _FakeTF(n_gpus=1, started=True), _FakeKeras()
    line = configure_tensorflow(WorkerPlacement(0, "0", 2, 2), RuntimeOptions(), tf=tf, keras=keras)
    assert line == ("worker 0: GPU 0 (memory growth not set: TensorFlow runtime already initialised), "
                    "precision float32, XLA off, threads intra=2 inter=2 (not set: TensorFlow runtime "
                    "already initialised)")
    assert keras.policies == []
    assert "GPU memory growth not set: Physical devices cannot be modified" in caplog.text


def test_compute_dtype_policy():
    assert compute_dtype_policy(RuntimeOptions(mixed_precision=True), 1) == "mixed_float16"
    assert compute_dtype_policy(RuntimeOptions(mixed_precision=True), 0) == "float32"
    assert compute_dtype_policy(RuntimeOptions(), 4) == "float32"


# --- configuring the real TensorFlow (one fresh process, ~6 s) -----------------------------

_REAL_WORKER = """
import os
from searcher.devices import RuntimeOptions, WorkerPlacement, configure_tensorflow
line = configure_tensorflow(WorkerPlacement.from_env(0, os.environ), RuntimeOptions(mixed_precision=True))
import keras, tensorflow as tf
assert float(tf.reduce_sum(tf.constant([1.0, 2.0]))) == 3.0  # the first op runs after the setup
print(line)
print(tf.config.threading.get_intra_op_parallelism_threads(), keras.mixed_precision.global_policy().name)
"""


def test_real_tensorflow_on_a_cpu_worker():
    placement = plan_workers(2, gpus=[], cpu_count=2)[0]
    result = subprocess.run([sys.executable, "-c", _REAL_WORKER], env={**os.environ, **placement.env()},
                            capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr[-2000:]
    line, checks = result.stdout.strip().splitlines()[-2:]
    assert line == ("worker 0: CPU (no GPU visible), precision float32 (mixed precision off: no GPU), "
                    "XLA off, threads intra=1 inter=1")
    assert checks == "1 float32"


def test_claim_gpu_spreads_workers_over_gpus_and_frees_on_exit(tmp_path):
    """Real processes holding real flocks, as worker containers on one host do."""
    import subprocess
    import sys

    from searcher.devices import claim_gpu

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time; from searcher.devices import claim_gpu; "
         f"g,h=claim_gpu('auto', gpus=['0','1'], lock_dir={str(tmp_path)!r}); print(g, flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        gpu, handle = claim_gpu("auto", gpus=["0", "1"], lock_dir=tmp_path)
        assert gpu == "1"
        with pytest.raises(UserError, match=r"--gpu: all 2 GPUs are taken by other workers"):
            claim_gpu("auto", gpus=["0", "1"], lock_dir=tmp_path)
        with pytest.raises(UserError, match=r"--gpu: GPU 0 is taken"):
            claim_gpu("0", gpus=["0", "1"], lock_dir=tmp_path)
        handle.close()
    finally:
        holder.kill()
        holder.wait()
    assert claim_gpu("0", gpus=["0", "1"], lock_dir=tmp_path)[0] == "0", "a dead worker's GPU is free again"
    with pytest.raises(UserError, match=r"--gpu: expected auto or one of 0, 1, got '7'"):
        claim_gpu("7", gpus=["0", "1"], lock_dir=tmp_path)
    with pytest.raises(UserError, match=r"--gpu: no GPU is visible"):
        claim_gpu("auto", gpus=[], lock_dir=tmp_path)


def test_the_start_up_filter_drops_only_the_known_lines_written_to_fd_2(capfd):
    """Written with os.write, as TensorFlow's C++ does, below Python's sys.stderr."""
    from searcher.devices import _STARTUP_NOISE, _filter_stderr

    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             "I0000 00:00:1796187918.369860    1839 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
             "GPU will not be used.\n")
    with _filter_stderr([_STARTUP_NOISE]):
        os.write(2, noise.encode())
        os.write(2, b"E0000 00:00:1.0 1 some_op.cc:1] a real error\n")
    assert capfd.readouterr().err == "E0000 00:00:1.0 1 some_op.cc:1] a real error\n"


# --- one training runtime for the search, retrain, replay, confirm and init -------------------


def test_a_trial_records_its_runtime_and_a_replay_applies_it_on_a_gpu_host(monkeypatch):
    runtime = TrainingRuntime(xla=False, mixed_precision=True, intra_op_threads=3, inter_op_threads=2)
    recorded = runtime.to_dict(n_visible_gpus=1)
    assert recorded == {"xla": False, "mixed_precision": True, "precision": "mixed_float16",
                        "intra_op_threads": 3, "inter_op_threads": 2}
    replayed = TrainingRuntime.from_dict(recorded)
    assert replayed == runtime
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    tf, keras = _FakeTF(n_gpus=1), _FakeKeras()
    line = apply_runtime(replayed, tf=tf, keras=keras)
    assert ("intra", 3) in tf.calls and ("inter", 2) in tf.calls
    assert keras.policies == ["mixed_float16"]
    assert "XLA off" in line, "a visible GPU does not turn XLA on: the trial's switch does"
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "3"


def test_a_trial_stored_before_runtimes_were_recorded_replays_as_workers_trained():
    assert TrainingRuntime.from_dict(None) == TrainingRuntime(xla=False, mixed_precision=False)
    assert TrainingRuntime().to_dict(n_visible_gpus=2)["precision"] == "float32"


def test_the_spec_runtime_and_the_placement_make_the_workers_runtime():
    from searcher.spec import load_spec

    spec = load_spec("digits-mlp")
    runtime = TrainingRuntime.from_spec(spec.runtime.model_copy(update={"xla": True}), WorkerPlacement(0, "1", 4, 2))
    assert runtime == TrainingRuntime(xla=True, mixed_precision=False, intra_op_threads=4, inter_op_threads=2)


TRAINING_CALLS = {"train", "train_every_fold", "train_other_folds", "fold_models", "count_params", "_fresh_model"}


def test_every_call_of_train_takes_the_runtime_from_one_place():
    """Read the code: each call of the training functions passes ``runtime=``, the one model
    builder call takes ``jit_compile=runtime.xla``, and no training function has a default
    (Keras' ``jit_compile="auto"`` turned XLA on whenever a GPU was visible)."""
    import ast

    root = Path(__file__).parent.parent / "searcher"
    calls, builds = [], []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                # Bare names: the training functions are imported by name (model.count_params() is Keras').
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if name in TRAINING_CALLS and not isinstance(node.func, ast.Name):
                    continue
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                keywords = {k.arg: k.value for k in node.keywords}
                if name in TRAINING_CALLS:
                    calls.append(where)
                    assert "runtime" in keywords, f"{where}: {name}(...) without runtime="
                if name == "build_model":
                    builds.append(where)
                    assert ast.unparse(keywords.get("jit_compile", ast.Constant(None))) == "runtime.xla", where
            if isinstance(node, ast.FunctionDef) and node.name in TRAINING_CALLS and path.name == "training.py":
                kwonly = {a.arg: d for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults)}
                assert "runtime" in kwonly and kwonly["runtime"] is None, f"{node.name}: runtime must be required"
                assert "jit_compile" not in kwonly, node.name
    assert len(calls) >= 8 and builds == ["searcher/training.py:" + builds[0].split(":")[1]], (calls, builds)
    for caller in ("confirm.py", "export.py", "init.py", "objective.py", "training.py"):
        assert any(caller in c for c in calls), f"{caller} trains through the shared runtime"
