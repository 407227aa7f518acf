"""deploy/kubernetes: built as `kubectl apply -k` builds it, and every cross-reference resolved.

Neither a cluster nor kustomize runs here, so `build` below does what kustomize does with
the features these files use (resources, generators, namespace, images) and refuses any
other, so a new feature cannot slip past the checks. The checks then hold the objects
against each other (selectors, ports, ConfigMap and Secret keys, volumes, `$(VAR)`s) and
against searcher itself (its commands and flags, the environment it reads, its exit codes).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from deploy_checks import assert_cli_accepts, env_names_searcher_reads, markdown_commands, searcher_args
from searcher import worker
from searcher.cli import app
from searcher.spec import SHIPPED_STUDIES, load_spec
from searcher.storage import RECONNECT_SECONDS

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
VARIANTS = {"in-cluster": K8S, "external-db": K8S / "overlays" / "external-db"}
DOC = ROOT / "docs" / "kubernetes.md"
IMAGE = "searcher:local"  # what docker-compose.yml builds from ./Dockerfile
NAMESPACE = "searcher"
LIBPQ_ENV = {"PGPASSWORD"}  # read by libpq under psycopg2, not by searcher's code
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "secretGenerator", "images"}
_CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
_WORKLOADS = {"Deployment", "StatefulSet", "Job", "Pod"}


# --- a kustomize build, for what these files use --------------------------------------


def _kustomization(folder: Path) -> dict[str, Any]:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (folder / name).is_file():
            return yaml.safe_load((folder / name).read_text())
    raise AssertionError(f"{folder}: no kustomization file")


def _read_env_file(path: Path) -> dict[str, str]:
    # The user writes db.env (git ignores it); the committed example stands in for it.
    path = path.with_name(path.name + ".example")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def _generate(kind: str, spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    unknown = set(spec) - {"name", "behavior", "literals", "files", "envs"}
    assert not unknown, f"{folder}: {kind} generator {spec['name']}: unsupported fields {unknown}"
    data: dict[str, str] = {}
    for literal in spec.get("literals", []):
        key, value = literal.split("=", 1)
        data[key] = value
    for entry in spec.get("files", []):
        key, _, path = entry.rpartition("=")
        file = (folder / path).resolve()
        assert file.is_relative_to(folder.resolve()), f"{folder}: {path} is outside the kustomization (kustomize refuses it)"
        data[key or file.name] = file.read_text()
    for path in spec.get("envs", []):
        data.update(_read_env_file(folder / path))
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}, "data": data}


def build(folder: Path, _seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k folder` would send (without the generators' name hashes)."""
    folder = folder.resolve()
    assert not any(folder in seen.parents or folder == seen for seen in _seen), (
        f"{folder} contains a kustomization that uses it: kustomize stops with 'cycle detected'"
    )
    k = _kustomization(folder)
    assert not set(k) - _KUSTOMIZATION_KEYS, f"{folder}: the test's build does not know {set(k) - _KUSTOMIZATION_KEYS}"
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = folder / entry
        if path.is_dir():
            objects += build(path, (*_seen, folder))
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in k.get(key, []):
            made = _generate(kind, spec, folder)
            existing = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == spec["name"]]
            behavior = spec.get("behavior", "create")
            if behavior == "create":
                assert not existing, f"{folder}: {kind} {spec['name']} exists already; use behavior: merge or replace"
                objects.append(made)
            else:
                assert existing, f"{folder}: {kind} {spec['name']}: nothing to {behavior}"
                existing[0]["data"] = {**existing[0]["data"], **made["data"]} if behavior == "merge" else made["data"]
    for obj in objects:
        if "namespace" in k and obj["kind"] not in _CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = k["namespace"]
        for image in k.get("images", []):
            for container in _containers(obj):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    return objects


# --- reading the objects --------------------------------------------------------------


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] in _WORKLOADS:
        return obj["spec"]["template"]["spec"]
    return None


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod_spec(obj)
    return [*pod.get("initContainers", []), *pod["containers"]] if pod else []


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj["metadata"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]).get("labels", {})


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"want one {kind} {name}, found {len(found)}"
    return found[0]


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args and env values; $$ escapes."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def _env_values(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """What the container's environment holds, with ConfigMap and Secret references resolved."""
    values: dict[str, str] = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            values[entry["name"]] = _expand(str(entry["value"]), values)
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind, ref = ("ConfigMap", source["configMapKeyRef"]) if "configMapKeyRef" in source else ("Secret", source["secretKeyRef"])
            values[entry["name"]] = _one(objects, kind, ref["name"])["data"][ref["key"]]
        elif "resourceFieldRef" in source:
            values[entry["name"]] = str(container["resources"]["requests"][source["resourceFieldRef"]["resource"].split(".", 1)[1]])
    return values


def _searcher_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        for container in _containers(obj):
            if container["image"].partition(":")[0] in ("searcher", IMAGE.partition(":")[0]):
                yield obj, container


@pytest.fixture(scope="module", params=sorted(VARIANTS), ids=str)
def objects(request) -> list[dict[str, Any]]:
    return build(VARIANTS[request.param])


def _where(obj: dict[str, Any], container: dict[str, Any] | None = None) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}" + (f" container {container['name']}" if container else "")


# --- structure --------------------------------------------------------------------------


def test_each_variant_has_its_parts_in_the_searcher_namespace():
    for variant, folder in VARIANTS.items():
        objs = build(folder)
        kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
        want = {"Namespace/searcher", "PersistentVolumeClaim/searcher-data", "Job/searcher-create", "Job/searcher-worker",
                "Deployment/searcher-dashboard", "Service/searcher-dashboard", "ConfigMap/searcher-settings",
                "ConfigMap/searcher-studies", "Secret/searcher-db"}
        postgres = {"StatefulSet/searcher-postgres", "Service/searcher-postgres"}
        assert want <= set(kinds), f"{variant}: missing {want - set(kinds)}"
        assert (postgres <= set(kinds)) == (variant == "in-cluster"), f"{variant}: {kinds}"
        assert len(kinds) == len(set(kinds)), f"{variant}: duplicate objects {kinds}"
        for obj in objs:
            if obj["kind"] not in _CLUSTER_SCOPED:
                assert obj["metadata"].get("namespace") == NAMESPACE, f"{variant}: {_where(obj)} outside {NAMESPACE}"
        apis = {o["apiVersion"] for o in objs}
        assert apis <= {"v1", "apps/v1", "batch/v1"}, f"{variant}: plain objects only, no operator or CRDs ({apis})"


def test_the_studies_config_map_holds_every_shipped_spec():
    studies = _one(build(K8S), "ConfigMap", "searcher-studies")["data"]
    assert set(studies) == {p.name for p in SHIPPED_STUDIES.glob("*.yaml")}, "searcher/studies/Kustomization lists them all"
    settings = _one(build(K8S), "ConfigMap", "searcher-settings")["data"]
    assert f"{settings['STUDY']}.yaml" in studies, f"STUDY={settings['STUDY']} is not a key of searcher-studies"


# --- cross-references ---------------------------------------------------------------------


def test_services_select_pods_and_name_their_ports(objects):
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        pods = [o for o in objects if _pod_spec(o) is not None and selector.items() <= _pod_labels(o).items()]
        assert pods, f"{_where(service)}: selector {selector} matches no pod template"
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", f"{_where(service)}: never exposed by default"
        ports = {p["name"]: p["containerPort"] for pod in pods for c in _containers(pod) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"{_where(service)}: targetPort {target} not in {ports}"
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert obj["spec"]["selector"]["matchLabels"].items() <= _pod_labels(obj).items(), _where(obj)
        if obj["kind"] == "StatefulSet":
            governing = _one(objects, "Service", obj["spec"]["serviceName"])
            assert governing["spec"].get("clusterIP") == "None", f"{_where(obj)}: serviceName must be a headless Service"


def test_volumes_config_maps_and_secrets_exist(objects):
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        pod = _pod_spec(obj)
        if pod is None:
            continue
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, f"{_where(obj)}: volume {volume}"
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names, f"{_where(obj)}: volume {volume}"
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names, _where(obj)
        for container in _containers(obj):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, f"{_where(obj, container)}: mount {mount['name']}"
            defined: set[str] = set()
            for entry in container.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", str(entry.get("value", ""))):
                    assert ref in defined, f"{_where(obj, container)}: {entry['name']} uses $({ref}) before it is set"
                defined.add(entry["name"])
            for arg in [*container.get("command", []), *container.get("args", [])]:
                for ref in re.findall(r"\$\((\w+)\)", arg):
                    assert ref in defined, f"{_where(obj, container)}: $({ref}) in {arg!r} is not in its env"
            for entry in container.get("env", []):
                field = entry.get("valueFrom", {}).get("resourceFieldRef")
                if field:
                    assert field["containerName"] == container["name"], f"{_where(obj, container)}: {entry['name']}"
            values = _env_values(container, objects)  # KeyError: a ConfigMap or Secret key that does not exist
            assert set(values) == defined, _where(obj, container)


def test_searcher_containers_use_the_image_commands_and_environment_searcher_has(objects):
    readable = env_names_searcher_reads() | LIBPQ_ENV
    studies = _one(objects, "ConfigMap", "searcher-studies")
    seen = set()
    for obj, container in _searcher_containers(objects):
        where = _where(obj, container)
        assert container["image"] == IMAGE, f"{where}: image {container['image']!r}, want the Dockerfile's {IMAGE}"
        assert "command" not in container, f"{where}: keep the image's entrypoint (searcher); set args"
        assert _pod_spec(obj).get("shareProcessNamespace") is True, (
            f"{where}: searcher must not be PID 1, which ignores a SIGTERM it has no handler for yet"
        )
        env = _env_values(container, objects)
        args = [_expand(arg, env) for arg in container["args"]]
        assert_cli_accepts(args, where=where)
        seen.add(args[0])
        used = {ref for arg in container["args"] for ref in re.findall(r"\$\((\w+)\)", arg)}
        assert set(env) <= readable | used, f"{where}: searcher reads none of {sorted(set(env) - readable - used)}"
        storage = make_url(env["SEARCHER_STORAGE"])
        assert storage.password is None, f"{where}: the storage URL must not hold the password"
        secret_ref = next(e for e in container["env"] if e["name"] == "PGPASSWORD")["valueFrom"]["secretKeyRef"]
        assert secret_ref["name"] == "searcher-db", where
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in _pod_spec(obj).get("volumes", [])}
        for arg in args[1:]:
            if arg.endswith(".yaml"):  # a spec file: in the mounted studies ConfigMap, and valid
                mount = next(m for m in mounts.values() if arg.startswith(m["mountPath"] + "/"))
                assert volumes[mount["name"]]["configMap"]["name"] == "searcher-studies", where
                key = arg[len(mount["mountPath"]) + 1 :]
                assert key in studies["data"], f"{where}: {key} is not in ConfigMap searcher-studies"
                assert load_spec(SHIPPED_STUDIES / key).name == env["STUDY"]
        if "SEARCHER_DATA_DIR" in env:
            mount = next(m for m in mounts.values() if m["mountPath"] == env["SEARCHER_DATA_DIR"])
            assert mount.get("readOnly") and volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "searcher-data"
    assert seen == {"create", "worker", "dashboard"}, seen


def test_the_postgres_database_user_and_password_match_what_searcher_uses():
    objects = build(K8S)
    postgres = _one(objects, "StatefulSet", "searcher-postgres")
    container = _containers(postgres)[0]
    env = _env_values(container, objects)
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready" and ["-U", env["POSTGRES_USER"]] == probe[probe.index("-U"):][:2], probe
    assert ["-d", env["POSTGRES_DB"]] == probe[probe.index("-d"):][:2] and "127.0.0.1" in probe, probe
    mount = container["volumeMounts"][0]
    assert mount["name"] == postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert env["PGDATA"].startswith(mount["mountPath"] + "/"), "initdb needs a subfolder of the new volume"
    url = make_url(_one(objects, "ConfigMap", "searcher-settings")["data"]["SEARCHER_STORAGE"])
    service = _one(objects, "Service", url.host)
    assert url.port in [p["port"] for p in service["spec"]["ports"]] and service["spec"]["selector"].items() <= _pod_labels(postgres).items()
    assert (url.username, url.database) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    password_ref = next(e for e in container["env"] if e["name"] == "POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]
    for _, searcher in _searcher_containers(objects):
        assert next(e for e in searcher["env"] if e["name"] == "PGPASSWORD")["valueFrom"]["secretKeyRef"] == password_ref


# --- the worker Job ------------------------------------------------------------------------


def _exit_code_of(args: list[str]) -> int:
    return CliRunner().invoke(app, args).exit_code


def _rule_codes(job: dict[str, Any], action: str, container: str) -> set[int]:
    codes = set()
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        if rule["action"] == action and "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container and rule["onExitCodes"]["operator"] == "In", rule
            codes |= set(rule["onExitCodes"]["values"])
    return codes


def test_the_worker_job_runs_one_gpu_per_pod_and_fails_instead_of_looping(tmp_path):
    objects = build(K8S)
    job = _one(objects, "Job", "searcher-worker")
    spec, pod = job["spec"], _pod_spec(job)
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] >= 1, spec
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy: Never"
    (container,) = pod["containers"]
    for key in ("requests", "limits"):
        assert container["resources"][key].get("nvidia.com/gpu") == 1, f"one GPU per worker pod ({key})"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "GPU nodes are often tainted"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}, "preemption first"
    user_error = _exit_code_of(["worker", str(tmp_path / "no-such-spec.yaml")])
    usage_error = _exit_code_of(["worker", "digits-mlp", "--no-such-flag"])
    assert _rule_codes(job, "FailJob", container["name"]) == {user_error, usage_error, worker.EXIT_FAILURES}
    killed_starting = 128 + signal.SIGTERM  # before the worker's handler is set: the default action
    assert _rule_codes(job, "Ignore", container["name"]) == {worker.EXIT_RECYCLE, worker.EXIT_INTERRUPTED, killed_starting}
    # On SIGTERM a worker fails its trial and queues it again within a second or two here; it
    # waits up to RECONNECT_SECONDS for a database that is restarting too (a drained node).
    assert pod["terminationGracePeriodSeconds"] >= RECONNECT_SECONDS + 20
    assert "--wait" in container["args"], "workers wait for the create Job's study instead of failing"

    create = _one(objects, "Job", "searcher-create")
    (create_container,) = _pod_spec(create)["containers"]
    assert create_container["args"][0] == "create" and "--wait" in create_container["args"]
    assert _rule_codes(create, "FailJob", create_container["name"]) == {user_error, usage_error}
    assert _pod_spec(create)["restartPolicy"] == "Never"
    assert "nvidia.com/gpu" not in str(create_container.get("resources")), "creating a study needs no GPU"


def test_the_dashboard_listens_where_its_service_points():
    objects = build(K8S)
    (container,) = _containers(_one(objects, "Deployment", "searcher-dashboard"))
    args = container["args"]
    assert args[0] == "dashboard" and args[args.index("--host") + 1] == "0.0.0.0"
    port = int(args[args.index("--port") + 1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    service = _one(objects, "Service", "searcher-dashboard")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["targetPort"] == "http"


# --- secrets, tools, docs ----------------------------------------------------------------


def _deploy_files() -> list[Path]:
    """What would be committed (a user's own, git-ignored db.env is not)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "deploy"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed, "no files under deploy/"
    return [ROOT / name for name in listed] + [SHIPPED_STUDIES / "Kustomization"]


def test_no_password_is_committed():
    for path in _deploy_files():
        text = path.read_text()
        where = path.relative_to(ROOT)
        assert not re.search(r"://[^/\s:@\"']+:[^@\s\"']+@", text), f"{where}: a URL with a password"
        for match in re.finditer(r"(?im)^[^#\n]*password\w*\s*[:=]\s*(?P<value>[^\s#]*)", text):
            assert match["value"] in ("", "|"), f"{where}: a password literal: {match[0]!r}"
    for folder in VARIANTS.values():
        assert _one(build(folder), "Secret", "searcher-db")["data"] == {"POSTGRES_PASSWORD": ""}, "an empty example"
        assert _is_ignored(folder / "db.env"), f"{folder}/db.env must be git-ignored"


def _is_ignored(path: Path) -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(path)]).returncode == 0


def test_the_data_loader_fills_the_volume_the_workers_read():
    (pod,) = [d for d in yaml.safe_load_all((K8S / "tools" / "data-loader.yaml").read_text()) if d]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"searcher-data"}
    (container,) = pod["spec"]["containers"]
    assert {m["name"] for m in container["volumeMounts"]} <= {v["name"] for v in pod["spec"]["volumes"]}
    assert not any(m.get("readOnly") for m in container["volumeMounts"])


def test_the_doc_commands_name_real_objects_and_flags():
    tools = [d for d in yaml.safe_load_all((K8S / "tools" / "data-loader.yaml").read_text()) if d]
    objects = {(o["kind"], o["metadata"]["name"]) for o in build(K8S) + tools}
    kinds = {"svc": "Service", "deploy": "Deployment", "job": "Job", "statefulset": "StatefulSet", "pod": "Pod"}
    invoked, applied = set(), set()
    for words in markdown_commands(DOC):
        if args := searcher_args(words):
            assert_cli_accepts(args, where="docs/kubernetes.md")
            invoked.add(args[0])
        if words[:1] != ["kubectl"]:
            continue
        for word in words:
            kind, _, name = word.partition("/")
            if kind in kinds and name and not (ROOT / word).exists():  # deploy/kubernetes is a path
                assert (kinds[kind], name) in objects, f"docs/kubernetes.md: {word} does not exist"
        if "-k" in words[:-1]:
            path = ROOT / words[words.index("-k") + 1]
            assert path.is_dir(), f"docs/kubernetes.md: no kustomization at {path}"
            applied.add(path.resolve())
    assert {"create", "status", "report", "export"} <= invoked, invoked
    assert {p.resolve() for p in VARIANTS.values()} <= applied, "the doc applies both variants"
