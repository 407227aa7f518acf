"""Docker deployment files: docker-compose.yml, Dockerfile, .dockerignore, .env.example.

Docker cannot run in CI, so these tests read the files the way Compose and
`docker build` do (YAML, then `${VAR}` interpolation from a fake `.env`) and pin
what a GPU host depends on: healthy-database ordering, one GPU per worker,
one storage URL, no password literals, a dashboard on localhost only.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.utils import canonicalize_name

from deploy_checks import assert_cli_accepts, markdown_commands, read_pins, requirements_of, runtime_requirements
from searcher.worker import EXIT_DONE, EXIT_RECYCLE, EXIT_UNAVAILABLE

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKER_DOC = ROOT / "docs" / "docker.md"
STUDIES_DIR = ROOT / "searcher" / "studies"

# What a user's .env holds. STUDY is left out so its default is exercised.
FAKE_ENV = {"POSTGRES_PASSWORD": "pw-from-dotenv"}
EXPECTED_STORAGE = "postgresql+psycopg2://searcher:pw-from-dotenv@postgres:5432/searcher"
DEFAULT_STUDY = "cifar-cnn"


class InterpolationError(Exception):
    """A `${VAR:?message}` or `${VAR?message}` variable is missing, as Compose reports it."""


# $$ | ${NAME} | ${NAME<op>arg} | $NAME; op is one of :- - :? ? :+ +
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables in one string the way Compose does.

    Supports `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}` and `${VAR+alt}`; an unset
    plain variable becomes "" (Compose warns). Nested variables are not supported.
    """

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"]
        is_set = name in env
        value = env.get(name, "")
        if op is None:
            return value
        usable = is_set and (value != "" or not op.startswith(":"))
        if op in (":-", "-"):
            return value if usable else arg
        if op in (":?", "?"):
            if not usable:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value
        return arg if usable else ""  # :+ and +

    result = _VARIABLE.sub(replace, text)
    assert "${" not in result, f"nested or malformed variable left after interpolation: {text!r}"
    return result


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not key) of a loaded Compose document."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yml as YAML gives it: anchors merged, variables not yet substituted."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with the fake .env."""
    return resolve(raw, FAKE_ENV)


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # ["KEY=value", ...] form
        return dict(item.split("=", 1) for item in env)
    return dict(env)


def _ports(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) for each short- or long-form port entry."""
    result = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result.append((entry.get("host_ip", ""), str(entry.get("published", "")), str(entry["target"])))
            continue
        assert isinstance(entry, str), f"quote port mappings, YAML may read 8080:8080 as a number (got {entry!r})"
        parts = entry.split(":")
        if len(parts) == 3:
            result.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            result.append(("", parts[0], parts[1]))
        else:
            result.append(("", "", parts[0]))
    return result


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


# --- compose: structure ----------------------------------------------------


def test_compose_has_the_three_services_and_no_version_key(raw):
    assert "version" not in raw, "the Compose spec has no top-level `version:`; remove it"
    for name in ("postgres", "worker", "dashboard"):
        assert name in raw["services"], f"docker-compose.yml: services.{name} is missing"


def test_postgres_is_postgres_16_with_room_for_many_workers(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16", f"services.postgres.image: want postgres:16 (got {postgres['image']!r})"
    env = _environment(postgres)
    assert env.get("POSTGRES_USER") == "searcher" and env.get("POSTGRES_DB") == "searcher", (
        f"services.postgres.environment: POSTGRES_USER and POSTGRES_DB must be searcher (got {env})"
    )
    assert "max_connections=200" in _command(postgres), (
        f"services.postgres.command must raise max_connections to 200 (got {postgres.get('command')!r})"
    )


def test_postgres_healthcheck_runs_pg_isready_for_the_searcher_database(compose):
    check = compose["services"]["postgres"].get("healthcheck")
    assert check, "services.postgres.healthcheck is missing: depends_on service_healthy would never pass"
    test = check["test"]
    words = shlex.split(test) if isinstance(test, str) else [w for w in test if w not in ("CMD", "CMD-SHELL")]
    words = [w for part in words for w in shlex.split(part)]
    assert "pg_isready" in words, f"services.postgres.healthcheck.test must run pg_isready (got {test!r})"
    joined = " ".join(words)
    assert "-U searcher" in joined and "-d searcher" in joined, (
        f"services.postgres.healthcheck.test must check user and database searcher (got {test!r})"
    )
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"services.postgres.healthcheck.{key} is not set"


def test_postgres_data_is_a_named_volume_declared_at_top_level(compose):
    volumes = compose["services"]["postgres"].get("volumes", [])
    sources = [v.split(":", 1)[0] for v in volumes if isinstance(v, str) and v.endswith("/var/lib/postgresql/data")]
    assert sources, f"services.postgres.volumes must mount /var/lib/postgresql/data (got {volumes})"
    source = sources[0]
    assert not source.startswith((".", "/", "~")), (
        f"postgres data must be a named volume, not a bind mount (got {source!r})"
    )
    assert source in (compose.get("volumes") or {}), f"volume {source!r} must be declared under top-level volumes:"


def test_postgres_port_is_not_published_beyond_localhost(compose):
    for host_ip, published, target in _ports(compose["services"]["postgres"]):
        assert host_ip == "127.0.0.1", (
            "services.postgres.ports: bind to 127.0.0.1 or publish nothing"
            f" (got {host_ip or '0.0.0.0'}:{published}:{target})"
        )


@pytest.mark.parametrize("name", ["worker", "dashboard"])
def test_service_waits_for_healthy_postgres(compose, name):
    depends = compose["services"][name].get("depends_on")
    assert isinstance(depends, dict), (
        f"services.{name}.depends_on must be the long form with a condition (got {depends!r})"
    )
    condition = depends.get("postgres", {}).get("condition")
    assert condition == "service_healthy", (
        f"services.{name}.depends_on.postgres.condition: want service_healthy (got {condition!r})"
    )


# --- compose: worker -------------------------------------------------------


def test_worker_command_runs_worker_for_the_study(raw, compose):
    command = _command(compose["services"]["worker"])
    assert command[:2] == ["worker", DEFAULT_STUDY], (
        f"services.worker.command: want `worker {DEFAULT_STUDY} ...` with STUDY unset (got {command})"
    )
    assert "--create" in command, f"services.worker.command: the first worker must create the study (got {command})"
    other = _command(resolve(raw, {**FAKE_ENV, "STUDY": "digits-mlp"})["services"]["worker"])
    assert other[1] == "digits-mlp", f"services.worker.command must take the study from $STUDY (got {other})"


def test_worker_can_be_scaled(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "services.worker.container_name blocks `--scale worker=N`; remove it"
    assert not worker.get("ports"), (
        f"services.worker.ports blocks `--scale worker=N`; remove them (got {worker['ports']})"
    )


def test_worker_reserves_nvidia_gpus_and_claims_one_per_container(compose):
    worker = compose["services"]["worker"]
    devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    nvidia = [d for d in devices if d.get("driver") == "nvidia"]
    assert nvidia, f"services.worker.deploy.resources.reservations.devices needs an nvidia entry (got {devices})"
    device = nvidia[0]
    assert device.get("capabilities") == ["gpu"], (
        f"nvidia device capabilities: want [gpu] (got {device.get('capabilities')})"
    )
    # Docker turns `count: N` into GPUs 0..N-1 for every container, so with
    # --scale all `count: 1` replicas share GPU 0. Each replica sees all GPUs
    # and locks a free one instead.
    assert device.get("count") == "all" and "device_ids" not in device, (
        f"nvidia device: want count: all with `--gpu auto`; count: 1 puts every replica on GPU 0 (got {device})"
    )
    command = _command(worker)
    assert "--gpu" in command and command[command.index("--gpu") + 1] == "auto", (
        f"services.worker.command needs `--gpu auto` so each replica takes a different GPU (got {command})"
    )
    lock_dir = _environment(worker).get("SEARCHER_LOCK_DIR")
    assert lock_dir, "services.worker.environment.SEARCHER_LOCK_DIR must be set for `--gpu auto`"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker.get("volumes", []) if isinstance(v, str)}
    assert mounts.get(lock_dir) in (compose.get("volumes") or {}), (
        f"the GPU lock directory {lock_dir} must be a named volume shared by all replicas"
        f" (got {mounts.get(lock_dir)!r})"
    )


def test_worker_reads_datasets_read_only_from_the_data_dir(compose):
    worker = compose["services"]["worker"]
    data_dir = _environment(worker).get("SEARCHER_DATA_DIR")
    assert data_dir == "/data", f"services.worker.environment.SEARCHER_DATA_DIR: want /data (got {data_dir!r})"
    mounts = [v for v in worker.get("volumes", []) if isinstance(v, str) and v.split(":")[1] == data_dir]
    assert mounts, f"services.worker.volumes must mount something at {data_dir}"
    assert mounts[0].endswith(":ro"), f"datasets must be mounted read-only (got {mounts[0]!r})"


def test_worker_restarts_only_on_failure(compose):
    restart = compose["services"]["worker"].get("restart")
    assert restart == "on-failure", (
        "services.worker.restart: want on-failure; a worker that finished the budget exits 0"
        f" and must stay down (got {restart!r})"
    )
    # on-failure restarts on any non-zero exit: the recycle (75) and "database unavailable"
    # codes among them, which the worker uses to be started again.
    for code in (EXIT_RECYCLE, EXIT_UNAVAILABLE):
        assert code != EXIT_DONE, code
        assert re.search(rf"\b{code}\b", COMPOSE_FILE.read_text()) and re.search(rf"\b{code}\b", DOCKER_DOC.read_text()), (
            f"docker-compose.yml and docs/docker.md say that exit {code} restarts the worker"
        )


# --- compose: storage URL and secrets ---------------------------------------


def test_worker_and_dashboard_share_one_storage_url(compose):
    urls = {name: _environment(compose["services"][name]).get("SEARCHER_STORAGE") for name in ("worker", "dashboard")}
    assert urls["worker"] == urls["dashboard"], f"SEARCHER_STORAGE differs between worker and dashboard: {urls}"
    assert urls["worker"] == EXPECTED_STORAGE, (
        f"SEARCHER_STORAGE: want {EXPECTED_STORAGE} with POSTGRES_PASSWORD from .env (got {urls['worker']!r})"
    )


def test_missing_password_stops_compose_with_a_hint(raw):
    with pytest.raises(InterpolationError, match=r"POSTGRES_PASSWORD.*set POSTGRES_PASSWORD in \.env"):
        resolve(raw, {})
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD"):
        resolve(raw, {"POSTGRES_PASSWORD": ""})


def test_no_password_literal_in_the_compose_file(raw):
    reference = re.compile(r"^\$\{POSTGRES_PASSWORD(?::?[-?][^}]*)?\}$")
    for name, service in raw["services"].items():
        value = _environment(service).get("POSTGRES_PASSWORD")
        if value is not None:
            assert reference.match(value), (
                f"services.{name}.environment.POSTGRES_PASSWORD must be a ${{...}} reference (got {value!r})"
            )

    text = COMPOSE_FILE.read_text()
    for match in re.finditer(r"[a-z][a-z0-9+.-]*://[^:/@\s\"']+:(?P<password>[^@\s\"']+)@", text):
        assert reference.match(match["password"]), f"URL with a literal password in docker-compose.yml: {match[0]!r}"
    for match in re.finditer(r"(?i)(?<!\{)\b\w*password\w*\s*[:=]\s*(?P<value>[^\s#]+)", text):
        value = match["value"].strip("\"'")
        assert value.startswith("${"), f"password literal in docker-compose.yml: {match[0]!r}"


# --- compose: dashboard -----------------------------------------------------


def test_dashboard_binds_all_interfaces_in_the_container_and_localhost_on_the_host(compose):
    dashboard = compose["services"]["dashboard"]
    command = _command(dashboard)
    assert command[0] == "dashboard", f"services.dashboard.command must run `dashboard` (got {command})"
    host = command[command.index("--host") + 1] if "--host" in command else None
    assert host == "0.0.0.0", (
        f"dashboard --host must be 0.0.0.0 inside the container, or the published port is dead (got {host!r})"
    )
    port = command[command.index("--port") + 1] if "--port" in command else None
    ports = _ports(dashboard)
    assert ports, "services.dashboard.ports is empty: the dashboard would be unreachable"
    for host_ip, published, target in ports:
        assert host_ip == "127.0.0.1", (
            f"services.dashboard.ports: publish on 127.0.0.1 only (got {host_ip or '0.0.0.0'}:{published}:{target})"
        )
        assert target == port, f"services.dashboard.ports: container port {target} differs from --port {port}"
    assert ("127.0.0.1", "8080", "8080") in ports, f"services.dashboard.ports: want 127.0.0.1:8080:8080 (got {ports})"


# --- Dockerfile, .dockerignore, .env.example --------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def _stages() -> tuple[dict[str, str], dict[str, str]]:
    """The Dockerfile's global ARG defaults, and each stage's name -> its FROM image."""
    args, stages = {}, {}
    for instruction, value in _dockerfile_instructions():
        if instruction == "ARG" and not stages and "=" in value:
            key, default = value.split("=", 1)
            args[key] = default
        if instruction == "FROM":
            image, _, name = value.partition(" AS ") if " AS " in value else value.partition(" as ")
            stages[name.strip() or f"stage{len(stages)}"] = image.strip()
    return args, stages


def test_dockerfile_builds_gpu_and_cpu_variants_from_pinned_tensorflow_images():
    args, stages = _stages()
    tensorflow = read_pins(CONSTRAINTS)["tensorflow"]
    bases = {"gpu": stages.get("base-gpu"), "cpu": stages.get("base-cpu")}
    for variant, image in bases.items():
        assert image, f"Dockerfile: no stage base-{variant} (got {stages})"
        reference, _, digest = image.partition("@")
        repository, _, tag = reference.partition(":")
        assert repository == "tensorflow/tensorflow", f"base-{variant}: want tensorflow/tensorflow (got {image!r})"
        assert tag == tensorflow + ("-gpu" if variant == "gpu" else ""), (
            f"base-{variant}: the tag must be the TensorFlow that constraints.txt pins ({tensorflow}), got {tag!r}"
        )
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"base-{variant}: malformed digest {digest!r}"
    final = list(stages.values())[-1]
    assert final == "base-${VARIANT}" and args.get("VARIANT") == "gpu", (
        f"Dockerfile: the last stage builds on base-${{VARIANT}}, gpu by default (got FROM {final}, VARIANT={args.get('VARIANT')})"
    )
    text = DOCKERFILE.read_text()
    assert "docker buildx imagetools inspect" in text, "Dockerfile: say how to look up and update the digests"


def test_dockerfile_installs_the_pinned_versions_from_constraints_txt():
    instructions = _dockerfile_instructions()
    copied = [i for i, (instruction, value) in enumerate(instructions) if instruction == "COPY" and "constraints.txt" in value.split()]
    assert copied, "Dockerfile: COPY constraints.txt before installing"
    installs = [(i, v) for i, (instruction, v) in enumerate(instructions) if instruction == "RUN" and "pip install" in v]
    assert installs, "Dockerfile: no pip install"
    for i, run in installs:
        for match in re.finditer(r"pip install ([^&;|]*)", run):
            command, words = match[0], shlex.split(match[1])
            if "--no-deps" in words:
                assert words[-1] == ".", f"Dockerfile: a --no-deps install is for searcher itself only: {command.strip()!r}"
                continue
            constraint = words[words.index("-c") + 1] if "-c" in words else None
            assert constraint == "constraints.txt" and copied[0] < i, (
                f"Dockerfile: installing dependencies without -c constraints.txt: {command.strip()!r}"
            )
    assert "check_tf" in DOCKERFILE.read_text(), "the build checks the base image's TensorFlow is the pinned one"


def test_constraints_pin_every_runtime_dependency():
    pins = read_pins(CONSTRAINTS)
    for requirement in runtime_requirements(ROOT / "pyproject.toml"):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {requirement.name}, a dependency in pyproject.toml"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )
    # What each pinned package requires is pinned too, wherever this environment has the same
    # version installed (the tests ran with it, so its metadata is the pinned one's).
    checked = 0
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed != version:
            continue
        checked += 1
        for requirement in requirements_of(name):
            assert canonicalize_name(requirement.name) in pins, (
                f"constraints.txt pins {name}=={version}, which requires {requirement}, not pinned"
            )
    assert checked, "no pinned version is installed here: regenerate constraints.txt in the venv the tests ran in"


def test_dockerfile_runs_searcher_as_a_non_root_user():
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    final = instructions[last_from:]
    entrypoint = [json.loads(v) for i, v in final if i == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1] == ["searcher"], f'Dockerfile ENTRYPOINT: want ["searcher"] (got {entrypoint})'
    cmd = [json.loads(v) for i, v in final if i == "CMD"]
    assert cmd and cmd[-1] == ["--help"], f'Dockerfile CMD: want ["--help"] (got {cmd})'
    users = [v for i, v in final if i == "USER"]
    assert users, "Dockerfile: no USER, the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), (
        f"Dockerfile: the last USER must not be root (got {users[-1]!r})"
    )
    installs = [v for i, v in final if i == "RUN" and "pip install" in v]
    assert installs and all("--no-cache-dir" in v for v in installs), (
        f"Dockerfile: every pip install needs --no-cache-dir (got {installs})"
    )


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_build_context():
    patterns = {
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    }
    for required in (".env", ".git", "*.db", "**/__pycache__", "searcher-logs", "test-artifacts", ".venv", "data"):
        assert required in patterns, f".dockerignore must list {required!r}"


def test_env_example_defines_every_variable_compose_requires(raw):
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    defined = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert used <= defined, f".env.example lacks variables docker-compose.yml uses: {sorted(used - defined)}"
    assert ".env" in (ROOT / ".gitignore").read_text().split(), ".env must be git-ignored: it holds the password"


@pytest.mark.skipif(not any(STUDIES_DIR.glob("*.yaml")), reason="no shipped studies yet")
def test_default_study_is_a_shipped_study():
    env_study = next(
        line.split("=", 1)[1].strip() for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith("STUDY=")
    )
    for study in {DEFAULT_STUDY, env_study}:
        assert (STUDIES_DIR / f"{study}.yaml").is_file(), (
            f"study {study!r} is used by docker-compose.yml/.env.example but not shipped"
        )


# --- the CLI surface the deployment relies on --------------------------------


def _doc_invocations() -> list[list[str]]:
    """searcher argument lists from the commands in docs/docker.md."""
    result = []
    for words in markdown_commands(DOCKER_DOC):
        if words[:3] == ["docker", "compose", "run"]:
            starts = [i for i, w in enumerate(words) if w in ("worker", "dashboard")]
            if starts:
                result.append(words[starts[0] + 1 :])
        elif words[:2] == ["docker", "run"] and "searcher:local" in words:
            result.append(words[words.index("searcher:local") + 1 :])
        elif words[:1] == ["searcher"] and len(words) > 1:
            result.append(words[1:])
    return [args for args in result if args]


def _invocations() -> list[list[str]]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    compose = resolve(raw, FAKE_ENV)
    from_compose = [_command(compose["services"][name]) for name in ("worker", "dashboard")]
    unique = {tuple(args): None for args in from_compose + _doc_invocations()}
    return [list(args) for args in unique]


def test_docs_mention_the_commands_the_brief_promises():
    commands = {args[0] for args in _doc_invocations()}
    assert {"status", "report", "worker"} <= commands, (
        f"docs/docker.md: missing status/report/worker commands (found {commands})"
    )


@pytest.mark.parametrize("args", _invocations(), ids=lambda args: " ".join(args))
def test_deployment_commands_exist_in_the_cli(args):
    assert_cli_accepts(args, where="docker-compose.yml / docs/docker.md")
