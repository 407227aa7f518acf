"""deploy/kubernetes: rendered as `kubectl apply -k` renders it, validated, and cross-checked.

Every kustomization is rendered by the real kustomize (`kubectl kustomize`) and every object
validated strictly against the Kubernetes API schemas of each version from 1.29 to the newest
that kubernetes-validate bundles. The checks then hold the objects against each other
(selectors, ports, ConfigMap and Secret keys, volumes, `$(VAR)`s, NetworkPolicies resolved
pod by pod), against the restricted Pod Security Standard, and against searcher itself (its
commands and flags, the environment it reads, its exit codes). No cluster runs here: with
CI=true a missing kubectl or kubernetes-validate fails the tests, elsewhere it skips them.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from deploy_checks import assert_cli_accepts, env_names_searcher_reads, markdown_commands, searcher_args
from searcher import sources
from searcher.cli import app
from searcher.devices import worker_index_from_env
from searcher.spec import SHIPPED_STUDIES, load_spec
from searcher.storage import RECONNECT_SECONDS
from searcher.worker import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_RECYCLE, EXIT_UNAVAILABLE

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
DOC = ROOT / "docs" / "kubernetes.md"
DATA_LOADER = K8S / "tools" / "data-loader.yaml"
GPU_IMAGE, CPU_IMAGE = "searcher:local", "searcher-cpu:local"  # what ./Dockerfile builds, per VARIANT
NAMESPACE = "searcher"
LIBPQ_ENV = {"PGPASSWORD"}  # read by libpq under psycopg2, not by searcher's code
OLDEST_KUBERNETES = Version("1.29")
# What an administrator applies; every other kustomization is rendered and validated too.
DEPLOYABLE = {"in-cluster": "deploy/kubernetes", "external-db": "deploy/kubernetes/overlays/external-db"}


# --- rendering and validating with the real tools -----------------------------------------


def _require(what: str, available: bool) -> None:
    if not available:
        message = f"{what} is needed to render and validate the manifests"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true): {what} must be installed", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the kustomizations read, with each db.env written from its example (the
    user writes db.env; git ignores it), so the render is the one a user's apply sends."""
    _require("kubectl", shutil.which("kubectl") is not None)
    root = tmp_path_factory.mktemp("k8s")
    shutil.copytree(K8S, root / "deploy" / "kubernetes", ignore=shutil.ignore_patterns("db.env"))
    shutil.copytree(SHIPPED_STUDIES, root / "searcher" / "studies")
    for example in (root / "deploy" / "kubernetes").rglob("db.env.example"):
        shutil.copy(example, example.with_name("db.env"))
    return root


def kustomize(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, f"kubectl kustomize {folder}: {done.stderr.strip()}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _kustomizations(root: Path) -> list[str]:
    """Every folder under deploy/kubernetes holding a Kustomization (Components are rendered
    inside the variants that use them)."""
    found = []
    for file in sorted(root.rglob("kustomization.yaml")):
        if yaml.safe_load(file.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(str(file.parent.relative_to(root)))
    return found


def _variant(tree: Path, name: str, edit: Any) -> Path:
    """A copy of the in-cluster variant with its kustomization.yaml edited, as a user would."""
    folder = tree / "deploy" / f"kubernetes-{name}"
    if not folder.exists():
        shutil.copytree(tree / "deploy" / "kubernetes", folder)
        file = folder / "kustomization.yaml"
        file.write_text(yaml.safe_dump(edit(yaml.safe_load(file.read_text()))))
    return folder


def _with_storage_classes(k: dict[str, Any]) -> dict[str, Any]:
    return {**k, "components": [*k["components"], "components/storage-classes"]}


def _without_data(k: dict[str, Any]) -> dict[str, Any]:
    return {**k, "components": [c for c in k["components"] if c != "components/data-volume"]}


@pytest.fixture(scope="session")
def rendered(tree: Path) -> dict[str, list[dict[str, Any]]]:
    """Every kustomization in the repository, plus the in-cluster variant with the optional
    storage-classes component added and with the data-volume component left out."""
    result = {path: kustomize(tree / path) for path in _kustomizations(tree)}
    assert set(DEPLOYABLE.values()) <= set(result), f"missing variants: {set(DEPLOYABLE.values()) - set(result)}"
    result["in-cluster + storage-classes"] = kustomize(_variant(tree, "classes", _with_storage_classes))
    result["in-cluster - data-volume"] = kustomize(_variant(tree, "no-data", _without_data))
    return result


@pytest.fixture(scope="session", params=sorted(DEPLOYABLE), ids=str)
def objects(request, rendered) -> list[dict[str, Any]]:
    return rendered[DEPLOYABLE[request.param]]


@functools.cache
def _definitions(version: str):
    """The strict schemas' shared definitions of one Kubernetes version, parsed once."""
    import referencing
    from kubernetes_validate import utils

    contents = utils.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return referencing.Resource.from_contents(contents) @ referencing.Registry()


@functools.cache
def _schema_validator(version: str, kind: str, api_version: str):
    """kubernetes-validate's strict schema for one kind and version, as kubernetes_validate.validate
    builds it (which parses the 1.8 MB of definitions again for every object)."""
    import jsonschema
    import referencing
    from kubernetes_validate import utils

    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = utils.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/{kind.lower()}-{group}.json", version)
    registry = referencing.Resource.from_contents(schema) @ _definitions(version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _kubernetes_versions() -> list[str]:
    from kubernetes_validate import utils

    return sorted({v for v in utils.all_versions() if Version(v) >= OLDEST_KUBERNETES}, key=Version)


def _require_kubernetes_validate() -> None:
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        _require("kubernetes-validate (pip install -e '.[test]')", False)


def test_every_kustomization_renders_and_validates_strictly_on_every_kubernetes_version(rendered):
    _require_kubernetes_validate()
    versions = _kubernetes_versions()
    assert versions and Version(versions[0]) == OLDEST_KUBERNETES, versions
    unique = {json.dumps(obj, sort_keys=True): (variant, obj) for variant, objs in rendered.items() for obj in objs}
    failures, summary = [], []
    for version in versions:
        ok = 0
        for variant, obj in unique.values():
            where = f"{variant}: {obj['kind']}/{obj['metadata']['name']} on {version}"
            errors = sorted(_schema_validator(version, obj["kind"], obj["apiVersion"]).iter_errors(obj), key=str)
            failures += [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
            ok += not errors
        summary.append(f"Kubernetes {version}: {ok} ok, {len(unique) - ok} failed")
    print(f"\n{len(unique)} distinct objects from {len(rendered)} renders ({', '.join(rendered)})")
    print("\n".join(summary))
    assert not failures, "\n".join(failures)


def test_the_schema_check_rejects_what_the_api_server_would(rendered):
    _require_kubernetes_validate()
    job = json.loads(json.dumps(_one(rendered[DEPLOYABLE["in-cluster"]], "Job", "searcher-worker")))
    validator = _schema_validator(str(OLDEST_KUBERNETES) + ".0", "Job", "batch/v1")
    assert not list(validator.iter_errors(job))
    del job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"]
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True  # a typo
    messages = [e.message for e in validator.iter_errors(job)]
    assert any("'status' is a required property" in m for m in messages), messages
    assert any("runAsNonroot" in m for m in messages), f"strict: unknown fields are errors ({messages})"


# --- reading the objects --------------------------------------------------------------------

_WORKLOADS = {"Deployment", "StatefulSet", "Job", "Pod"}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] in _WORKLOADS:
        return obj["spec"]["template"]["spec"]
    return None


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod_spec(obj)
    return [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])] if pod else []


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj["metadata"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]).get("labels", {})


def _named(obj: dict[str, Any], name: str) -> bool:
    """The object is `name`, or a generated ConfigMap or Secret `name-<hash>`."""
    actual = obj["metadata"]["name"]
    return actual == name or (obj["kind"] in ("ConfigMap", "Secret") and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", actual) is not None)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and _named(o, name)]
    assert len(found) == 1, f"want one {kind} {name}, found {len(found)}"
    return found[0]


def _data(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's values (a Secret's are base64)."""
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()} | obj.get("stringData", {})
    return obj.get("data", {})


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
            values[entry["name"]] = _data(_one(objects, kind, ref["name"]))[ref["key"]]
        elif "resourceFieldRef" in source:
            values[entry["name"]] = str(container["resources"]["requests"][source["resourceFieldRef"]["resource"].split(".", 1)[1]])
    return values


def _searcher_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The containers that run the searcher CLI (the image's entrypoint), not init containers."""
    for obj in objects:
        pod = _pod_spec(obj)
        for container in pod["containers"] if pod else []:
            if container["image"] in (GPU_IMAGE, CPU_IMAGE):
                yield obj, container


def _where(obj: dict[str, Any], container: dict[str, Any] | None = None) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}" + (f" container {container['name']}" if container else "")


def _tools() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(DATA_LOADER.read_text()) if d]


# --- structure ------------------------------------------------------------------------------


def test_each_variant_has_its_parts_in_the_searcher_namespace(rendered):
    for variant, path in DEPLOYABLE.items():
        objs = rendered[path]
        kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
        want = {"PersistentVolumeClaim/searcher-data", "Job/searcher-create", "Job/searcher-worker",
                "Deployment/searcher-dashboard", "Service/searcher-dashboard", "NetworkPolicy/searcher-deny-ingress"}
        postgres = {"StatefulSet/searcher-postgres", "Service/searcher-postgres", "PodDisruptionBudget/searcher-postgres",
                    "NetworkPolicy/searcher-postgres"}
        assert want <= set(kinds), f"{variant}: missing {want - set(kinds)}"
        for kind, name in (("ConfigMap", "searcher-settings"), ("ConfigMap", "searcher-studies"), ("Secret", "searcher-db")):
            _one(objs, kind, name)
        assert (postgres <= set(kinds)) == (variant == "in-cluster"), f"{variant}: {kinds}"
        assert len(kinds) == len(set(kinds)), f"{variant}: duplicate objects {kinds}"
        for obj in objs:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{variant}: {_where(obj)} outside {NAMESPACE}"
        apis = {o["apiVersion"] for o in objs}
        assert apis <= {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}, (
            f"{variant}: plain objects only, no operator or CRDs ({apis})"
        )


def test_no_kustomization_that_deploys_searcher_can_delete_a_namespace(tree, rendered):
    for path, objs in rendered.items():
        namespaces = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
        if path == "deploy/kubernetes/namespace":
            assert [o["kind"] for o in objs] == ["Namespace"] and namespaces == [NAMESPACE], objs
            labels = objs[0]["metadata"].get("labels", {})
            assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels
        else:
            assert not namespaces, f"{path}: `kubectl delete -k` would delete namespace {namespaces}"
    # A team's overlay that moves searcher into its own namespace: delete -k leaves the namespace.
    team = tree / "team-overlay"
    team.mkdir(exist_ok=True)
    (team / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "team-a",
         "resources": ["../deploy/kubernetes"]}))
    moved = kustomize(team)
    assert not [o for o in moved if o["kind"] == "Namespace"]
    assert {o["metadata"]["namespace"] for o in moved} == {"team-a"}


def test_the_studies_config_map_holds_every_shipped_spec(rendered):
    objs = rendered[DEPLOYABLE["in-cluster"]]
    studies = _data(_one(objs, "ConfigMap", "searcher-studies"))
    assert set(studies) == {p.name for p in SHIPPED_STUDIES.glob("*.yaml")}, "searcher/studies/Kustomization lists them all"
    settings = _data(_one(objs, "ConfigMap", "searcher-settings"))
    assert f"{settings['STUDY']}.yaml" in studies, f"STUDY={settings['STUDY']} is not a key of searcher-studies"


# --- cross-references -----------------------------------------------------------------------


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
    for obj in objects:
        pod = _pod_spec(obj)
        if pod is None:
            continue
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                _one(objects, "ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:
                _one(objects, "Secret", volume["secret"]["secretName"])
            if "persistentVolumeClaim" in volume:
                _one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
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
    studies = _data(_one(objects, "ConfigMap", "searcher-studies"))
    seen = set()
    for obj, container in _searcher_containers(objects):
        where = _where(obj, container)
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
        assert _named(_one(objects, "Secret", secret_ref["name"]), "searcher-db"), where
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in _pod_spec(obj).get("volumes", [])}
        for arg in args[1:]:
            if arg.endswith(".yaml"):  # a spec file: in the mounted studies ConfigMap, and valid
                mount = next(m for m in mounts.values() if arg.startswith(m["mountPath"] + "/"))
                assert _named(_one(objects, "ConfigMap", volumes[mount["name"]]["configMap"]["name"]), "searcher-studies"), where
                key = arg[len(mount["mountPath"]) + 1 :]
                assert key in studies, f"{where}: {key} is not in ConfigMap searcher-studies"
                assert load_spec(SHIPPED_STUDIES / key).name == env["STUDY"]
        if "SEARCHER_DATA_DIR" in env:
            mount = next(m for m in mounts.values() if m["mountPath"] == env["SEARCHER_DATA_DIR"])
            assert mount.get("readOnly") and volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "searcher-data"
    assert seen == {"create", "worker", "dashboard"}, seen


def test_only_the_workers_pull_the_gpu_image(objects):
    images = {}
    for obj, container in _searcher_containers(objects):
        images[container["args"][0]] = container["image"]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert (container["image"] == GPU_IMAGE) == bool(gpus), f"{_where(obj, container)}: the GPU image only where a GPU is asked for"
    assert images == {"worker": GPU_IMAGE, "create": CPU_IMAGE, "dashboard": CPU_IMAGE}, images
    worker = _one(objects, "Job", "searcher-worker")
    for init in _pod_spec(worker).get("initContainers", []):
        assert init["image"] == GPU_IMAGE, f"{_where(worker, init)}: the workers' own image, already on the node"


def test_the_postgres_database_user_and_password_match_what_searcher_uses(rendered):
    objects = rendered[DEPLOYABLE["in-cluster"]]
    postgres = _one(objects, "StatefulSet", "searcher-postgres")
    container = _pod_spec(postgres)["containers"][0]
    env = _env_values(container, objects)
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready" and ["-U", env["POSTGRES_USER"]] == probe[probe.index("-U"):][:2], probe
    assert ["-d", env["POSTGRES_DB"]] == probe[probe.index("-d"):][:2] and "127.0.0.1" in probe, probe
    mount = next(m for m in container["volumeMounts"] if m["name"] == postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"])
    assert env["PGDATA"].startswith(mount["mountPath"] + "/"), "initdb needs a subfolder of the new volume"
    url = make_url(_data(_one(objects, "ConfigMap", "searcher-settings"))["SEARCHER_STORAGE"])
    service = _one(objects, "Service", url.host)
    assert url.port in [p["port"] for p in service["spec"]["ports"]] and service["spec"]["selector"].items() <= _pod_labels(postgres).items()
    assert (url.username, url.database) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    password_ref = next(e for e in container["env"] if e["name"] == "POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]
    for _, searcher in _searcher_containers(objects):
        assert next(e for e in searcher["env"] if e["name"] == "PGPASSWORD")["valueFrom"]["secretKeyRef"] == password_ref


# --- the Restricted Pod Security Standard ------------------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ : the baseline controls,
# then the restricted ones, as the API server's PodSecurity admission applies them.

_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}
_SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(obj: dict[str, Any]) -> list[str]:
    """What in a workload's pod breaks the restricted Pod Security Standard (empty: it passes)."""
    pod = _pod_spec(obj)
    metadata = obj["metadata"] if obj["kind"] == "Pod" else obj["spec"]["template"].get("metadata", {})
    pod_sc = pod.get("securityContext", {})
    containers = _containers(obj)
    bad = []
    # Baseline.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            bad.append(f"spec.{field}: must be unset or false")
    for name, sc in [("pod", pod_sc), *((c["name"], c.get("securityContext", {})) for c in containers)]:
        if sc.get("windowsOptions", {}).get("hostProcess"):
            bad.append(f"{name}: windowsOptions.hostProcess")
        se = sc.get("seLinuxOptions", {})
        if se.get("type") not in _SELINUX_TYPES or se.get("user") or se.get("role"):
            bad.append(f"{name}: seLinuxOptions {se}")
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            bad.append(f"{name}: seccompProfile Unconfined")
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            bad.append(f"{name}: appArmorProfile Unconfined")
    for key, value in metadata.get("annotations", {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            bad.append(f"annotation {key}: {value}")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in _SAFE_SYSCTLS:
            bad.append(f"pod: sysctl {sysctl['name']}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            bad.append(f"volume {volume['name']}: hostPath")
        if not kinds <= _RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']}: type {sorted(kinds - _RESTRICTED_VOLUMES)} is not allowed")
    for c in containers:
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{c['name']}: procMount {sc['procMount']}")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                bad.append(f"{c['name']}: hostPort {port['hostPort']}")
        # Restricted.
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: allowPrivilegeEscalation must be false")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            bad.append(f"{c['name']}: capabilities.drop must include ALL")
        added = set(capabilities.get("add", []))
        if not added <= {"NET_BIND_SERVICE"}:  # restricted; baseline's list is wider
            bad.append(f"{c['name']}: capabilities.add {sorted(added)}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{c['name']}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{c['name']}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{c['name']}: seccompProfile must be RuntimeDefault or Localhost (got {seccomp})")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod: runAsUser 0")
    return bad


def test_every_pod_meets_the_restricted_pod_security_standard(rendered):
    checked = []
    for path, objs in [*rendered.items(), ("tools/data-loader.yaml", _tools())]:
        for obj in objs:
            if _pod_spec(obj) is None:
                continue
            assert not restricted_violations(obj), f"{path}: {_where(obj)}: {restricted_violations(obj)}"
            pod = _pod_spec(obj)
            assert pod.get("automountServiceAccountToken") is False, f"{path}: {_where(obj)}: no service-account token"
            checked.append(obj["metadata"]["name"])
    assert {"searcher-worker", "searcher-create", "searcher-dashboard", "searcher-postgres", "data-loader"} <= set(checked)
    postgres = _pod_spec(_one(rendered[DEPLOYABLE["in-cluster"]], "StatefulSet", "searcher-postgres"))["securityContext"]
    assert (postgres["runAsUser"], postgres["runAsGroup"], postgres["fsGroup"]) == (999, 999, 999), (
        "the postgres image's own user, and its group owns the new volume"
    )


def test_the_restricted_check_catches_what_it_should(rendered):
    worker = _one(rendered[DEPLOYABLE["in-cluster"]], "Job", "searcher-worker")
    breaks = {
        "hostPath": lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostNetwork": lambda pod: pod.update(hostNetwork=True),
        "seccompProfile must be": lambda pod: pod["securityContext"].pop("seccompProfile"),
        "runAsNonRoot": lambda pod: pod["securityContext"].pop("runAsNonRoot"),
        "allowPrivilegeEscalation": lambda pod: pod["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "drop must include ALL": lambda pod: pod["containers"][0]["securityContext"].pop("capabilities"),
        "capabilities.add": lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "hostPort": lambda pod: pod["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
        "runAsUser 0": lambda pod: pod["securityContext"].update(runAsUser=0),
        "privileged": lambda pod: pod["containers"][0]["securityContext"].update(privileged=True),
    }
    for expected, make_bad in breaks.items():
        copy = json.loads(json.dumps(worker))
        make_bad(_pod_spec(copy))
        assert any(expected in v for v in restricted_violations(copy)), f"{expected}: {restricted_violations(copy)}"


# --- network policies, resolved pod by pod ---------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a label set."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, f"not a label selector: {selector}"
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        key, values, op = e["key"], e.get("values", []), e["operator"]
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _pod_ports(obj: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in _containers(obj) for p in c.get("ports", []) if "name" in p}


def ingress_allowed(policies: list[dict[str, Any]], target: dict[str, Any], source: dict[str, Any], port: int) -> bool:
    """Whether NetworkPolicies let a TCP connection from pod `source` to `port` of pod `target`
    through. Pods are {"labels", "namespace", "namespace_labels", "ports"}; the semantics of the
    networking.k8s.io/v1 API: policies add up, and a pod no Ingress policy selects is open."""
    selecting = [p for p in policies if p["metadata"]["namespace"] == target["namespace"]
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and _selects(p["spec"]["podSelector"], target["labels"])]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            peer_ok = peers is None or any(_peer_matches(peer, policy, source) for peer in peers)
            ports = rule.get("ports")
            port_ok = ports is None or any(
                p.get("protocol", "TCP") == "TCP" and (p.get("port") is None or p["port"] == port
                                                      or target["ports"].get(p["port"]) == port)
                for p in ports)
            if peer_ok and port_ok:
                return True
    return False


def _peer_matches(peer: dict[str, Any], policy: dict[str, Any], source: dict[str, Any]) -> bool:
    if "ipBlock" in peer:
        return False  # pods are matched by selectors here; no policy of ours uses ipBlock
    if "namespaceSelector" in peer:
        namespace_ok = _selects(peer["namespaceSelector"], source["namespace_labels"])
    else:
        namespace_ok = source["namespace"] == policy["metadata"]["namespace"]
    return namespace_ok and _selects(peer.get("podSelector", {}), source["labels"])


def _as_pod(obj: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"name": obj["metadata"]["name"], "labels": _pod_labels(obj), "namespace": namespace,
            "namespace_labels": {"kubernetes.io/metadata.name": namespace}, "ports": _pod_ports(obj)}


def test_network_policies_let_only_searcher_reach_postgres_and_nothing_reach_the_dashboard(rendered):
    objs = rendered[DEPLOYABLE["in-cluster"]]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    pods = {o["metadata"]["name"]: _as_pod(o) for o in objs if _pod_spec(o) is not None}
    loader = _as_pod(_tools()[0])
    other_app = {"name": "other-app", "labels": {"app": "web"}, "namespace": NAMESPACE,
                 "namespace_labels": {"kubernetes.io/metadata.name": NAMESPACE}, "ports": {}}
    other_namespace = {**other_app, "name": "elsewhere", "namespace": "team-b",
                       "namespace_labels": {"kubernetes.io/metadata.name": "team-b"}, "labels": _pod_labels(_one(objs, "Job", "searcher-worker"))}
    everyone = [*pods.values(), loader, other_app, other_namespace]
    postgres, dashboard = pods["searcher-postgres"], pods["searcher-dashboard"]
    dashboard_port = dashboard["ports"]["http"]

    allowed_to_postgres = {p["name"] for p in everyone if ingress_allowed(policies, postgres, p, 5432)}
    assert allowed_to_postgres == {"searcher-create", "searcher-worker", "searcher-dashboard"}, allowed_to_postgres
    assert not [p["name"] for p in everyone if ingress_allowed(policies, postgres, p, 22)], "5432 only"
    assert not [p["name"] for p in everyone if ingress_allowed(policies, dashboard, p, dashboard_port)], "port-forward only"
    for name in ("searcher-worker", "searcher-create"):
        assert not [p["name"] for p in everyone if ingress_allowed(policies, pods[name], p, 8080)], f"{name} serves nothing"
    # Each policy selects pods that exist, and each peer selector some pod it means.
    for policy in policies:
        assert any(_selects(policy["spec"]["podSelector"], p["labels"]) for p in pods.values()), _where(policy)
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                assert any(_peer_matches(peer, policy, p) for p in pods.values()), f"{_where(policy)}: {peer} selects no pod"
    # The resolver itself: without policies everything is open.
    assert ingress_allowed([], dashboard, other_namespace, dashboard_port)
    # external-db: still no way in.
    external = rendered[DEPLOYABLE["external-db"]]
    policies = [o for o in external if o["kind"] == "NetworkPolicy"]
    for obj in external:
        if _pod_spec(obj) is not None:
            assert not [p["name"] for p in everyone if ingress_allowed(policies, _as_pod(obj), p, 8080)], _where(obj)


# --- PostgreSQL's disruption budget, the Jobs ------------------------------------------------


def test_postgres_is_not_evicted_by_a_drain(rendered):
    objs = rendered[DEPLOYABLE["in-cluster"]]
    postgres = _one(objs, "StatefulSet", "searcher-postgres")
    (budget,) = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert _selects(budget["spec"]["selector"], _pod_labels(postgres))
    allowed = budget["spec"].get("maxUnavailable", postgres["spec"]["replicas"] - budget["spec"].get("minAvailable", 0))
    assert allowed == 0, f"{_where(budget)}: with {postgres['spec']['replicas']} replica a drain may evict it"
    assert "kubectl drain" in DOC.read_text() and "PodDisruptionBudget" in DOC.read_text(), "docs say what a drain does"


def _exit_code_of(args: list[str]) -> int:
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SystemExit), f"searcher {args}: {result.exception!r}, not a deliberate exit"
    return result.exit_code


def _rule_codes(job: dict[str, Any], action: str, container: str) -> set[int]:
    codes = set()
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        if rule["action"] == action and "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container and rule["onExitCodes"]["operator"] == "In", rule
            codes |= set(rule["onExitCodes"]["values"])
    return codes


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_worker_job_runs_one_gpu_per_pod_and_fails_instead_of_looping(rendered, tmp_path):
    objects = rendered[DEPLOYABLE["in-cluster"]]
    job = _one(objects, "Job", "searcher-worker")
    spec, pod = job["spec"], _pod_spec(job)
    assert spec["completionMode"] == "Indexed", "each pod gets JOB_COMPLETION_INDEX, searcher's worker index"
    # What Kubernetes adds to an Indexed Job's pod; nothing in the manifest overrides it.
    (container,) = pod["containers"]
    env = _env_values(container, objects)
    assert "--worker-index" not in container["args"] and worker_index_from_env({**env, "JOB_COMPLETION_INDEX": "3"}) == 3
    assert spec["parallelism"] == spec["completions"] >= 1, spec
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
    assert spec["ttlSecondsAfterFinished"] >= 86400, "a finished Job's logs stay a day at least"
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy: Never"
    for key in ("requests", "limits"):
        assert container["resources"][key].get("nvidia.com/gpu") == 1, f"one GPU per worker pod ({key})"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), "GPU nodes are often tainted"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}, "preemption first"
    user_error = _exit_code_of(["worker", str(tmp_path / "no-such-spec.yaml")])
    usage_error = _exit_code_of(["worker", "digits-mlp", "--no-such-flag"])
    assert _rule_codes(job, "FailJob", container["name"]) == {user_error, usage_error, EXIT_FAILURES}
    killed_starting = 128 + signal.SIGTERM  # before the worker's handler is set: the default action
    retried = {EXIT_UNAVAILABLE, EXIT_RECYCLE, EXIT_INTERRUPTED, killed_starting}
    assert _rule_codes(job, "Ignore", container["name"]) == retried
    # 69 is replaced uncounted; what keeps a database that never comes back from replacing pods
    # forever is the new pod's start-up wait, which ends in an exit the policy fails the Job on.
    no_database = f"postgresql+psycopg2://searcher@127.0.0.1:{_closed_port()}/searcher"
    gave_up = _exit_code_of(["worker", "digits-mlp", "--storage", no_database, "--wait", "1"])
    assert gave_up in _rule_codes(job, "FailJob", container["name"]), f"a start-up wait that gave up exits {gave_up}"
    # On SIGTERM a worker fails its trial and queues it again within a second or two here; it
    # waits up to RECONNECT_SECONDS for a database that is restarting too (a drained node).
    assert pod["terminationGracePeriodSeconds"] >= RECONNECT_SECONDS + 20
    assert "--wait" in container["args"], "workers wait for the create Job's study instead of failing"

    create = _one(objects, "Job", "searcher-create")
    (create_container,) = _pod_spec(create)["containers"]
    assert create_container["args"][0] == "create" and "--wait" in create_container["args"]
    assert _rule_codes(create, "FailJob", create_container["name"]) == {user_error, usage_error}
    assert EXIT_UNAVAILABLE in _rule_codes(create, "Count", create_container["name"]), "creating again is safe"
    assert _pod_spec(create)["restartPolicy"] == "Never"
    assert create["spec"]["ttlSecondsAfterFinished"] > 0
    assert "nvidia.com/gpu" not in str(create_container.get("resources")), "creating a study needs no GPU"


def test_the_dashboard_listens_where_its_service_points(rendered):
    objects = rendered[DEPLOYABLE["in-cluster"]]
    (container,) = _containers(_one(objects, "Deployment", "searcher-dashboard"))
    args = container["args"]
    assert args[0] == "dashboard" and args[args.index("--host") + 1] == "0.0.0.0"
    port = int(args[args.index("--port") + 1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    service = _one(objects, "Service", "searcher-dashboard")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["targetPort"] == "http"


# --- storage: classes, the optional data volume, waiting for data -----------------------------


def _claims(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    claims = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    for obj in objs:
        if obj["kind"] == "StatefulSet":
            claims |= {t["metadata"]["name"]: t["spec"] for t in obj["spec"].get("volumeClaimTemplates", [])}
    return claims


def test_storage_classes_are_the_default_unless_the_component_names_them(rendered):
    default = _claims(rendered[DEPLOYABLE["in-cluster"]])
    assert set(default) == {"searcher-data", "pgdata"} and not [c for c in default.values() if "storageClassName" in c]
    named = _claims(rendered["in-cluster + storage-classes"])
    assert all(c.get("storageClassName") for c in named.values()), named
    assert named["searcher-data"]["accessModes"] == ["ReadWriteMany"], "every worker node mounts the data"
    assert named["pgdata"]["accessModes"] == ["ReadWriteOnce"]


def test_the_data_volume_is_optional(rendered):
    for path in ("deploy/kubernetes/base", "in-cluster - data-volume"):
        objs = rendered[path]
        worker = _one(objs, "Job", "searcher-worker")
        pod = _pod_spec(worker)
        assert "initContainers" not in pod and not [v for v in pod["volumes"] if "persistentVolumeClaim" in v], path
        assert "SEARCHER_DATA_DIR" not in {e["name"] for e in pod["containers"][0]["env"]}, path
        assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"], path
    with_data = _pod_spec(_one(rendered[DEPLOYABLE["in-cluster"]], "Job", "searcher-worker"))
    assert [c["name"] for c in with_data["initContainers"]] == ["wait-for-data"]


def test_workers_wait_for_the_data_files_their_study_reads(objects, tmp_path):
    worker = _one(objects, "Job", "searcher-worker")
    pod = _pod_spec(worker)
    (init,) = pod["initContainers"]
    (container,) = pod["containers"]
    data_dir = _env_values(container, objects)["SEARCHER_DATA_DIR"]
    (mount,) = [m for m in init["volumeMounts"] if m["mountPath"] == data_dir]
    assert mount.get("readOnly") and mount["name"] in {m["name"] for m in container["volumeMounts"] if m["mountPath"] == data_dir}
    files = _env_values(init, objects)["DATA_FILES"].split()
    settings = _data(_one(objects, "ConfigMap", "searcher-settings"))
    dataset = load_spec(SHIPPED_STUDIES / f"{settings['STUDY']}.yaml").data.dataset
    names_searcher_reads = " ".join(sources._FILES[dataset]).replace("/", " ").replace("(", " ").split()
    assert files and set(files) <= set(names_searcher_reads), f"DATA_FILES {files}: {dataset} reads {sources._FILES[dataset]}"

    # The init container's script, run by sh on a local folder standing in for the volume.
    script = init["command"][-1].replace(f"{data_dir}/", f"{tmp_path}/")
    assert init["command"][:2] == ["sh", "-c"] and str(tmp_path) in script
    waiting = subprocess.Popen(["sh", "-c", script.replace("sleep 10", "sleep 0.1")], env={"DATA_FILES": " ".join(files), "PATH": os.environ["PATH"]},
                               stdout=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout.readline().startswith(f"waiting for {tmp_path}/{files[0]}")
        assert waiting.poll() is None, "it waits rather than failing the pod"
        for name in files:  # copied under another name, then renamed: no half file is seen
            (tmp_path / f".{name}.part").write_bytes(b"data")
            (tmp_path / f".{name}.part").rename(tmp_path / name)
        assert waiting.wait(timeout=60) == 0
        assert f"found {tmp_path}/{files[-1]}" in waiting.stdout.read()
    finally:
        waiting.kill()


# --- secrets, tools, docs -------------------------------------------------------------------


def _deploy_files() -> list[Path]:
    """What would be committed (a user's own, git-ignored db.env is not)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "deploy"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed, "no files under deploy/"
    return [ROOT / name for name in listed if (ROOT / name).exists()] + [SHIPPED_STUDIES / "Kustomization"]


def test_no_password_is_committed(rendered):
    for path in _deploy_files():
        text = path.read_text()
        where = path.relative_to(ROOT)
        assert not re.search(r"://[^/\s:@\"']+:[^@\s\"']+@", text), f"{where}: a URL with a password"
        for match in re.finditer(r"(?im)^[^#\n]*password\w*\s*[:=]\s*(?P<value>[^\s#]*)", text):
            assert match["value"] in ("", "|"), f"{where}: a password literal: {match[0]!r}"
    for path in DEPLOYABLE.values():
        assert _data(_one(rendered[path], "Secret", "searcher-db")) == {"POSTGRES_PASSWORD": ""}, "an empty example"
        assert _is_ignored(ROOT / path / "db.env"), f"{path}/db.env must be git-ignored"


def _is_ignored(path: Path) -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(path)]).returncode == 0


def test_the_data_loader_fills_the_volume_the_workers_read():
    (pod,) = _tools()
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"searcher-data"}
    (container,) = pod["spec"]["containers"]
    assert {m["name"] for m in container["volumeMounts"]} <= {v["name"] for v in pod["spec"]["volumes"]}
    assert not any(m.get("readOnly") for m in container["volumeMounts"])
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001, "the workers' user owns what it copies"


def test_the_doc_commands_name_real_objects_and_flags(rendered):
    objects = {(o["kind"], o["metadata"]["name"]) for objs in rendered.values() for o in objs} | {
        (o["kind"], o["metadata"]["name"]) for o in _tools()}
    kinds = {"svc": "Service", "deploy": "Deployment", "job": "Job", "statefulset": "StatefulSet", "pod": "Pod",
             "pdb": "PodDisruptionBudget", "networkpolicy": "NetworkPolicy"}
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
    assert {(ROOT / p).resolve() for p in DEPLOYABLE.values()} | {(K8S / "namespace").resolve()} <= applied, (
        "the doc applies both variants and the namespace"
    )


def test_the_doc_explains_every_exit_code_the_jobs_act_on(rendered):
    text = DOC.read_text()
    rows = {int(code) for cells in re.findall(r"^\|([^|\n]*)\|", text, flags=re.M) for code in re.findall(r"\b(\d{1,3})\b", cells)}
    for job in (o for o in rendered[DEPLOYABLE["in-cluster"]] if o["kind"] == "Job"):
        for rule in job["spec"]["podFailurePolicy"]["rules"]:
            for code in rule.get("onExitCodes", {}).get("values", []):
                assert code in rows, f"docs/kubernetes.md: exit {code} ({_where(job)}: {rule['action']}) is in no table row"
    for word in ("JOB_COMPLETION_INDEX", "imagePullSecret", "storageClassName", "NetworkPolicy", "constraints.txt"):
        assert word in text, f"docs/kubernetes.md does not mention {word}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
