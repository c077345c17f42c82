"""packaging/kubernetes: the manifests, schema-checked and held to what the README says.

kubernetes-validate checks each manifest against the Kubernetes schema it bundles
(`KUBERNETES_VERSION`, strict: an unknown field fails), offline; the rest checks the
promises: two non-root, read-only replicas with probes on the real endpoints and
resource requests, the migration Job running the compose file's migration command and
pods that wait for it, a PodDisruptionBudget and a Service that select those pods, and
secrets only by reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.shared.cli import build_parser
from tests.packaging.manifests import (
    FLEET_UID,
    KUBERNETES_DIR,
    KUBERNETES_VERSION,
    load_yaml_documents,
    run_tool,
    tool,
    unknown_env_names,
)
from tests.support.compose import FLEET_SERVICE, MIGRATION_SERVICE, load_compose

KUSTOMIZATION = KUBERNETES_DIR / "kustomization.yaml"


def _manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES_DIR.glob("*.yaml") if p != KUSTOMIZATION)


@pytest.fixture(scope="module")
def resources() -> dict[str, dict[str, Any]]:
    """Every resource of the manifests, by kind (one of each kind here)."""
    found: dict[str, dict[str, Any]] = {}
    for path in _manifest_files():
        for doc in load_yaml_documents(path):
            assert doc["kind"] not in found, f"a second {doc['kind']} in {path.name}"
            found[doc["kind"]] = doc
    return found


def _pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_the_manifests_validate_strictly_against_the_kubernetes_schema() -> None:
    files = [str(p) for p in _manifest_files()]
    result = run_tool(
        tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", *files
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "pdb.yaml"
    text = (KUBERNETES_DIR / "pdb.yaml").read_text()
    bad.write_text(text.replace("minAvailable: 1", "minAvailable: 1\n  minAvialable: 1"))
    result = run_tool(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(bad))
    assert result.returncode != 0
    assert "minAvialable" in result.stdout + result.stderr


def test_the_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_yaml_documents(KUSTOMIZATION)
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]
    assert [i["name"] for i in kustomization["images"]] == ["edgefleet"]


def test_two_non_root_read_only_replicas_with_resource_requests(
    resources: dict[str, dict[str, Any]],
) -> None:
    for kind in ("Deployment", "Job"):
        pod = _pod_spec(resources[kind])
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == FLEET_UID
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, container["name"]
            assert security["allowPrivilegeEscalation"] is False, container["name"]
            assert security["capabilities"]["drop"] == ["ALL"], container["name"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
    assert resources["Deployment"]["spec"]["replicas"] == 2


def test_readiness_is_healthz_and_liveness_does_not_restart_for_a_lost_database(
    resources: dict[str, dict[str, Any]],
) -> None:
    (fleet,) = _pod_spec(resources["Deployment"])["containers"]
    assert fleet["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # /healthz is 503 while the database or broker is away: a restart would not help.
    assert fleet["livenessProbe"]["httpGet"]["path"] == "/metrics"
    assert fleet["startupProbe"]["httpGet"]["path"] == "/metrics"
    port = fleet["ports"][0]
    assert port["name"] == "http"
    config = resources["ConfigMap"]["data"]
    assert port["containerPort"] == int(config["EDGEFLEET_FLEET_API_PORT"])


def test_the_job_migrates_first_and_new_pods_wait_for_it(
    resources: dict[str, dict[str, Any]],
) -> None:
    compose = load_compose()["services"]
    (job,) = _pod_spec(resources["Job"])["containers"]
    assert job["command"] == compose[MIGRATION_SERVICE]["command"]
    assert resources["Job"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    pod = _pod_spec(resources["Deployment"])
    wait = pod["initContainers"][0]
    assert wait["command"] == ["edgefleet", "fleet", "migrate", "current"]
    (fleet,) = pod["containers"]
    assert fleet["command"] == compose[FLEET_SERVICE]["command"]
    parser = build_parser()
    for command in (job["command"], wait["command"], fleet["command"]):
        assert callable(parser.parse_args(command[1:]).handler)


def test_the_service_and_the_budget_select_the_fleet_pods(
    resources: dict[str, dict[str, Any]],
) -> None:
    labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert resources["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert resources["Service"]["spec"]["selector"].items() <= labels.items()
    assert resources["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    budget = resources["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] == 1
    job_labels = resources["Job"]["spec"]["template"]["metadata"]["labels"]
    assert not resources["Service"]["spec"]["selector"].items() <= job_labels.items()


def test_secrets_are_referenced_never_inline(resources: dict[str, dict[str, Any]]) -> None:
    assert "Secret" not in resources
    config = resources["ConfigMap"]["data"]
    assert not [k for k in config if any(w in k for w in ("PASSPHRASE", "PASSWORD", "TOKEN"))]
    assert "EDGEFLEET_FLEET_DATABASE_URL" not in config  # it carries the password
    pod = _pod_spec(resources["Deployment"])
    (fleet,) = pod["containers"]
    from_secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in fleet["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert from_secrets == {
        "EDGEFLEET_FLEET_DATABASE_URL": "edgefleet-fleet",
        "EDGEFLEET_KEY_PASSPHRASE": "edgefleet-fleet",
        "EDGEFLEET_FLEET_ADMIN_TOKEN": "edgefleet-fleet",
    }
    assert all("value" not in e for e in fleet["env"])
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert {s["secretName"] for s in secret_volumes.values()} == {
        "edgefleet-keys",
        "edgefleet-broker-client",
    }
    # The device CA is required: a replica without it would make a CA of its own.
    paths = {item["path"] for item in secret_volumes["keys-secret"]["items"]}
    assert "device-ca/ca.bundle.pem" in paths


def test_every_variable_is_a_setting_the_fleet_reads(
    resources: dict[str, dict[str, Any]],
) -> None:
    names = set(resources["ConfigMap"]["data"])
    for kind in ("Deployment", "Job"):
        for container in _containers(_pod_spec(resources[kind])):
            names |= {e["name"] for e in container.get("env", [])}
    assert not unknown_env_names(names)


def test_the_mounted_paths_are_the_configured_ones(resources: dict[str, dict[str, Any]]) -> None:
    config = resources["ConfigMap"]["data"]
    (fleet,) = _pod_spec(resources["Deployment"])["containers"]
    mounts = {m["mountPath"] for m in fleet["volumeMounts"]}
    assert {config["EDGEFLEET_FLEET_DATA_DIR"], config["EDGEFLEET_FLEET_KEYS_DIR"]} <= mounts
    assert config["EDGEFLEET_FLEET_REPOSITORY_DIR"].startswith(config["EDGEFLEET_FLEET_DATA_DIR"])
    for name in ("CA_FILE", "CERT_FILE", "KEY_FILE"):
        assert config[f"EDGEFLEET_FLEET_BROKER_{name}"].rsplit("/", 1)[0] in mounts


def test_the_cluster_runs_the_replicas_with_the_compose_settings(
    resources: dict[str, dict[str, Any]],
) -> None:
    config = resources["ConfigMap"]["data"]
    compose_env = load_compose()["services"][FLEET_SERVICE]["environment"]
    shared = (set(config) & set(compose_env)) - {"EDGEFLEET_FLEET_BROKER_URL"}  # its host
    assert len(shared) >= 10
    assert {k: config[k] for k in shared} == {k: compose_env[k] for k in shared}
