"""The GitOps manifests (manifests/): every overlay builds, validates, retags the images, keeps every pod to
the restricted profile, passes checkov, and commits no secret.

Needs `kubectl` (kustomize), `kubernetes-validate` and `checkov` (its own virtual environment, see
`checkov_binary`); nothing here reaches the network.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cutout.platform.inference_service import InferenceServiceConfig, build_inference_service
from cutout.platform.mpijob import MPIJobConfig, TrainingArgs, build_mpijob
from cutout.platform.sdk_models import UnknownFieldError, parse_resource, to_dict
from cutout.train.config import TrainConfig, on_cluster_ranks

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("local", "dev", "prod")
NAMESPACES = {"local": "cutout", "dev": "cutout-dev", "prod": "cutout"}
# The Kubernetes schemas of the API the pinned client (kubernetes 30.1.0) speaks.
KUBERNETES_VERSION = "1.30.0"
CUSTOM_KINDS = {"InferenceService"}
ISVC_FILE = MANIFESTS / "base" / "serving" / "inferenceservice.yaml"
OUR_IMAGES = ("cutout-pipeline", "cutout-serve", "cutout-train")
# Labels the platform puts on pods it creates (KServe on the InferenceService's, Argo on pipeline steps').
PLATFORM_POD_LABELS = {
    "InferenceService": {"serving.kserve.io/inferenceservice": "cutout", "component": "predictor"},
    "PipelineStep": {"workflows.argoproj.io/workflow": "cutout-training-x7k2p"},
}
SENSITIVE_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY)", re.IGNORECASE)
REFERENCE_KEY = re.compile(r"_(PATH|FILE|DIR|URI|URL|ENV)$")  # names where a secret is kept, not secrets


def is_sensitive(name: str) -> bool:
    return bool(SENSITIVE_KEY.search(name)) and not REFERENCE_KEY.search(name)


def kustomize(path: Path) -> list[dict]:
    """`kubectl kustomize path`, parsed."""
    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """The base and every overlay, built once."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl (with kustomize) is needed: apt-get install kubectl")
    return {name: kustomize(MANIFESTS / "overlays" / name) for name in OVERLAYS} | {
        "base": kustomize(MANIFESTS / "base")
    }


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


# --- pod specs ----------------------------------------------------------------------------------------


def pod_specs(doc: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, pod spec, pod labels) of each pod a resource runs; an InferenceService has two."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        template = doc["spec"]["template"]
        yield f"{kind}/{name}", template["spec"], template["metadata"].get("labels", {})
    elif kind == "CronJob":
        template = doc["spec"]["jobTemplate"]["spec"]["template"]
        yield f"{kind}/{name}", template["spec"], template["metadata"].get("labels", {})
    elif kind == "InferenceService":
        for component in ("predictor", "transformer"):
            if component in doc["spec"]:
                labels = {**PLATFORM_POD_LABELS["InferenceService"], "component": component}
                yield f"{kind}/{name}/{component}", doc["spec"][component], labels
    elif kind == "MPIJob":
        for role, replica in doc["spec"]["mpiReplicaSpecs"].items():
            template = replica["template"]
            yield f"{kind}/{name}/{role}", template["spec"], template["metadata"].get("labels", {})


def restricted_profile_problems(pod: dict, read_only_root: bool) -> list[str]:
    """What in one pod spec breaks the restricted Pod Security Standard, or lacks requests and limits."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")
    problems += [f"volume {v['name']} is a hostPath" for v in pod.get("volumes", []) if "hostPath" in v]
    for container in pod.get("initContainers", []) + pod["containers"]:
        context, where = container.get("securityContext", {}), f"container {container['name']}"

        def setting(key: str, context=context):
            return context.get(key, pod_context.get(key))

        if setting("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            problems.append(f"{where}: runs as UID 0")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        capabilities = context.get("capabilities", {})
        if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
            problems.append(f"{where}: capabilities are not drop [ALL] with nothing added")
        if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccomp profile is not RuntimeDefault")
        if read_only_root and context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound, {}))
            if missing:
                problems.append(f"{where}: no {bound} for {', '.join(sorted(missing))}")
    return problems


def test_restricted_profile_check_finds_what_it_looks_for():
    pod = {"containers": [{"name": "app", "securityContext": {"runAsNonRoot": True}}], "hostNetwork": True}
    problems = restricted_profile_problems(pod, read_only_root=True)
    joined = "\n".join(problems)
    for words in ("hostNetwork", "allowPrivilegeEscalation", "capabilities", "seccomp", "writable", "limits"):
        assert words in joined


# --- building and validating ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_kustomize_builds_every_overlay_with_every_part(rendered, name):
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered[name]}
    expected = {
        ("Namespace", NAMESPACES.get(name, "cutout")), ("ServiceAccount", "cutout-pipeline-runner"),
        ("Role", "cutout-pipeline-runner"), ("RoleBinding", "cutout-pipeline-runner"),
        ("Deployment", "cutout-minio"), ("PersistentVolumeClaim", "cutout-minio"),
        ("Service", "cutout-minio"),
        ("Job", "cutout-minio-bootstrap"), ("Deployment", "cutout-mlflow"), ("Service", "cutout-mlflow"),
        ("PersistentVolumeClaim", "cutout-mlflow"), ("InferenceService", "cutout"),
        ("Deployment", "cutout-review"), ("Service", "cutout-review"), ("CronJob", "cutout-retraining"),
        ("NetworkPolicy", "default-deny"), ("ConfigMap", "cutout-params"),
    }  # fmt: skip
    assert expected <= kinds
    namespaced = [doc for doc in rendered[name] if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {NAMESPACES.get(name, "cutout")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_against_the_kubernetes_schemas(rendered, overlay):
    checked = 0
    for doc in rendered[overlay]:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        # strict: a field the schema does not define is an error, not silently dropped by the API server.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 30


def test_schema_validation_refuses_a_misspelled_field(rendered):
    deployment = copy.deepcopy(one(rendered["prod"], "Deployment", "cutout-review"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_round_trip_through_their_sdk_models(rendered, overlay):
    custom = [doc for doc in rendered[overlay] if doc["kind"] in CUSTOM_KINDS]
    assert [doc["kind"] for doc in custom] == ["InferenceService"]
    for doc in custom:
        assert to_dict(parse_resource(doc)) == doc


def test_sdk_round_trip_refuses_a_misspelled_field(rendered):
    service = copy.deepcopy(one(rendered["prod"], "InferenceService", "cutout"))
    service["spec"]["predictor"]["minReplica"] = 2
    with pytest.raises(UnknownFieldError, match="minReplica"):
        parse_resource(service)


def test_committed_inference_service_is_what_the_builder_renders_today():
    committed = yaml.safe_load(ISVC_FILE.read_text(encoding="utf-8"))
    rendered = to_dict(build_inference_service(InferenceServiceConfig(namespace=None)))
    assert committed == rendered, (
        f"{ISVC_FILE.relative_to(ROOT)} differs from the builder's output: regenerate it with "
        '`cutout platform isvc --dry-run --namespace ""` (keep its comment header)'
    )


# --- images -----------------------------------------------------------------------------------------------


def overlay_images(overlay: str) -> dict[str, str]:
    """Our image names → the reference the overlay's `images:` gives them."""
    kustomization = yaml.safe_load((MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text())
    return {
        entry["name"]: f"{entry.get('newName', entry['name'])}:{entry['newTag']}"
        for entry in kustomization["images"]
    }


def containers_by_image(docs: list[dict]) -> Iterator[tuple[str, str]]:
    for doc in docs:
        for where, pod, _ in pod_specs(doc):
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield where, container["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_retag_every_image_including_the_inference_service(rendered, overlay):
    wanted = overlay_images(overlay)
    assert set(wanted) == {"cutout-pipeline", "cutout-serve"}
    seen = set()
    for where, image in containers_by_image(rendered[overlay]):
        if image.startswith("quay.io/minio/"):
            assert re.search(r":RELEASE\.[0-9TZ-]+@sha256:[0-9a-f]{64}$", image), f"{where}: {image} unpinned"
            continue
        base_name = image.rsplit("/", 1)[-1].split(":")[0]
        assert base_name in wanted, f"{where}: {image} is not one of our images"
        assert image == wanted[base_name], f"{where}: {image} was not retagged to {wanted[base_name]}"
        seen.add(where)
    assert {"InferenceService/cutout/predictor", "InferenceService/cutout/transformer"} <= seen
    # The pipeline starts the training and serving images itself: its parameters name the same release.
    params = one(rendered[overlay], "ConfigMap", "cutout-params")["data"]
    assert params["SERVE_IMAGE"] == wanted["cutout-serve"]
    assert params["CUTOUT_PIPELINE_IMAGE"] == wanted["cutout-pipeline"]
    assert params["TRAIN_IMAGE"] == wanted["cutout-serve"].replace("cutout-serve", "cutout-train")


def test_base_images_are_the_builders_defaults(rendered):
    images = {image for _, image in containers_by_image(rendered["base"]) if "minio" not in image}
    assert images == {"cutout-pipeline:0.1.0", "cutout-serve:0.1.0"}


# --- security ---------------------------------------------------------------------------------------------


def training_job() -> dict:
    """The MPIJob the pipeline creates at run time (its pods live in the same namespace)."""
    training = TrainConfig("s3://cutout/prepared", checkpoint_dir="s3://cutout/ckpt/run",
                           run_info="s3://cutout/runs/run.json")  # fmt: skip
    args = TrainingArgs(tuple(on_cluster_ranks(training, gpus=True).to_argv()))
    return to_dict(build_mpijob(args, MPIJobConfig()))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_profile_with_requests_and_limits(rendered, overlay):
    pods = [spec for doc in rendered[overlay] for spec in pod_specs(doc)]
    assert len(pods) == 7  # minio, bootstrap, mlflow, review, cronjob, predictor, transformer
    for where, pod, _ in pods:
        assert restricted_profile_problems(pod, read_only_root=True) == [], where
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
        if not where.startswith("InferenceService"):  # KServe's pods take the namespace's default account
            assert pod.get("automountServiceAccountToken") is False, f"{where} mounts an API token"
    namespace = one(rendered[overlay], "Namespace", NAMESPACES[overlay])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_training_pods_meet_the_restricted_profile():
    # mpirun, sshd and the DataLoader write under the root filesystem: it stays writable there only.
    for where, pod, _ in pod_specs(training_job()):
        assert restricted_profile_problems(pod, read_only_root=False) == [], where


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
            "Exists": key in labels, "DoesNotExist": key not in labels,
        }[operator]  # fmt: skip
        if not ok:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_a_way_for_every_pod(rendered, overlay):
    policies = by_kind(rendered[overlay], "NetworkPolicy")
    deny = one(policies, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    specific = [p for p in policies if p["spec"]["podSelector"]]  # beyond default-deny and DNS
    pods = [(where, labels) for doc in rendered[overlay] for where, _, labels in pod_specs(doc)]
    pods += [(where, labels) for where, _, labels in pod_specs(training_job())]
    pods.append(("pipeline step", PLATFORM_POD_LABELS["PipelineStep"]))
    for where, labels in pods:
        matching = [p["metadata"]["name"] for p in specific if selects(p["spec"]["podSelector"], labels)]
        assert matching, f"{where} ({labels}) has no NetworkPolicy of its own: default deny cuts it off"
    # MinIO and MLflow take traffic only from named clients, on their one port.
    for name, port in (("cutout-minio", 9000), ("cutout-mlflow", 5000)):
        (rule,) = one(policies, "NetworkPolicy", name)["spec"]["ingress"]
        assert rule["ports"] == [{"port": port}] and rule["from"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege_in_its_own_namespace(rendered, overlay):
    docs = rendered[overlay]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    for role in by_kind(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"Role {role['metadata']['name']}: wildcard {field}"
            assert not {"secrets", "pods/exec", "roles", "rolebindings"} & set(rule["resources"])
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert {s["namespace"] for s in binding["subjects"]} == {NAMESPACES[overlay]}
    grants = {
        (group, resource): set(rule["verbs"])
        for rule in one(docs, "Role", "cutout-pipeline-runner")["rules"]
        for group in rule["apiGroups"] for resource in rule["resources"]
    }  # fmt: skip
    assert {"create", "get", "watch", "delete"} <= grants[("kubeflow.org", "mpijobs")]
    assert {"create", "get", "watch", "patch"} <= grants[("serving.kserve.io", "inferenceservices")]
    assert "delete" not in grants[("serving.kserve.io", "inferenceservices")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_argo_cd_application_syncs_its_overlay_into_its_namespace(rendered, overlay):
    application = yaml.safe_load((MANIFESTS / "argocd" / f"application-{overlay}.yaml").read_text())
    assert (application["apiVersion"], application["kind"]) == ("argoproj.io/v1alpha1", "Application")
    spec = application["spec"]
    assert spec["source"]["path"] == f"manifests/overlays/{overlay}"
    assert (ROOT / spec["source"]["path"] / "kustomization.yaml").is_file()
    assert spec["destination"]["namespace"] == NAMESPACES[overlay]
    # The deploy step owns the model version: Argo CD must not roll it back to Git's.
    (ignored,) = spec["ignoreDifferences"]
    assert ignored["kind"] == "InferenceService"
    assert ".spec.predictor.containers[].args" in ignored["jqPathExpressions"]
    assert "RespectIgnoreDifferences=true" in spec["syncPolicy"]["syncOptions"]
    assert ("automated" in spec["syncPolicy"]) == (overlay != "prod")


# --- checkov ----------------------------------------------------------------------------------------------

# A pod that breaks the rules on purpose, scanned with the manifests: checkov must fail it, which shows the
# scan ran the Kubernetes checks at all.
INSECURE_CANARY = """\
apiVersion: v1
kind: Pod
metadata:
  name: insecure-canary
  namespace: canary
spec:
  hostNetwork: true
  containers:
    - name: app
      image: busybox
      securityContext:
        privileged: true
"""


def checkov_binary() -> str:
    """checkov, from its own virtual environment (its pins clash with the project's: boto3, packaging)."""
    candidates = [os.environ.get("CUTOUT_CHECKOV"), str(ROOT / ".venv" / "checkov" / "bin" / "checkov")]
    candidates.append(str(Path(sys.executable).parent / "checkov"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("checkov")
    if found:
        return found
    pytest.fail("checkov is not installed: python3.11 -m venv .venv/checkov && "
                ".venv/checkov/bin/pip install checkov==3.3.30 (or set CUTOUT_CHECKOV)")  # fmt: skip


@pytest.fixture(scope="module")
def checkov_report(rendered, tmp_path_factory) -> dict[str, dict]:
    """One checkov run: the rendered overlays, Argo CD Applications, Dockerfiles and the canary."""
    scan = tmp_path_factory.mktemp("checkov")
    for overlay in OVERLAYS:
        (scan / f"{overlay}.yaml").write_text(yaml.safe_dump_all(rendered[overlay]), encoding="utf-8")
    for application in (MANIFESTS / "argocd").glob("*.yaml"):
        shutil.copy(application, scan / application.name)
    for dockerfile in (ROOT / "images").glob("*/Dockerfile"):
        (scan / dockerfile.parent.name).mkdir()
        shutil.copy(dockerfile, scan / dockerfile.parent.name / "Dockerfile")
    (scan / "canary").mkdir()
    (scan / "canary" / "pod.yaml").write_text(INSECURE_CANARY, encoding="utf-8")
    # Not --quiet: the report keeps the skipped checks and their reasons.
    command = [checkov_binary(), "-d", str(scan), "--framework", "kubernetes", "dockerfile",
               "--skip-download", "-o", "json"]  # fmt: skip
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    reports = json.loads(result.stdout)
    return {report["check_type"]: report for report in (reports if isinstance(reports, list) else [reports])}


def test_checkov_fails_nothing_but_the_canary(checkov_report):
    assert set(checkov_report) == {"kubernetes", "dockerfile"}
    failed = [
        (check["check_id"], check["resource"], check["file_path"])
        for report in checkov_report.values()
        for check in report["results"]["failed_checks"]
    ]
    ours = [entry for entry in failed if not entry[2].startswith("/canary/")]
    assert ours == [], "checkov fails these (fix them, or skip with a reason in the manifest):\n" + "\n".join(
        map(str, ours)
    )
    canary = {check_id for check_id, _, path in failed if path.startswith("/canary/")}
    assert {"CKV_K8S_16", "CKV_K8S_19"} <= canary  # privileged, hostNetwork
    assert all(report["summary"]["parsing_errors"] == 0 for report in checkov_report.values())


def test_every_checkov_skip_gives_a_reason(checkov_report):
    skipped = [check for report in checkov_report.values() for check in report["results"]["skipped_checks"]]
    assert skipped
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.split()) >= 4, (
            f"{check['check_id']} on {check['resource']} skipped without a reason"
        )


# --- secrets ----------------------------------------------------------------------------------------------


def committed_secret_problems(path: Path, text: str) -> list[str]:
    """Secret values in one file: Secret objects with data, env values for sensitive names, key material."""
    problems = []
    if re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text) or re.search(r"\bAKIA[0-9A-Z]{16}\b", text):
        problems.append(f"{path}: key material")
    if path.suffix in (".yaml", ".yml"):
        for doc in yaml.safe_load_all(text):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "Secret"
                and (doc.get("data") or doc.get("stringData"))
            ):
                problems.append(f"{path}: Secret {doc['metadata']['name']} with data")
        for match in re.finditer(r"- name: (\S+)\n\s+value: (.+)", text):
            if is_sensitive(match[1]):
                problems.append(f"{path}: {match[1]} set in the manifest (use valueFrom a Secret)")
    for match in re.finditer(r"^([A-Za-z0-9_]+)=(.*)$", text, flags=re.MULTILINE):
        if is_sensitive(match[1]) and match[2].strip():
            problems.append(f"{path}: {match[1]} has a value")
    return problems


def test_secret_scan_finds_committed_values():
    secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s3\nstringData:\n  AWS_SECRET_ACCESS_KEY: x\n"
    env = "env:\n  - name: MINIO_ROOT_PASSWORD\n    value: hunter2hunter2\n"
    assert committed_secret_problems(Path("a.yaml"), secret)
    assert committed_secret_problems(Path("b.yaml"), env)
    assert committed_secret_problems(Path("c.env"), "CUTOUT_REVIEW_TOKEN=0123abcd\n")
    assert not committed_secret_problems(
        Path("d.env"), "CUTOUT_REVIEW_TOKEN=\nAWS_DEFAULT_REGION=eu-west-1\n"
    )


def test_no_secret_value_is_committed():
    files = [p for folder in ("manifests", "images") for p in (ROOT / folder).rglob("*") if p.is_file()]
    assert len(files) > 30
    problems = [problem for path in files for problem in committed_secret_problems(path, path.read_text())]
    assert problems == []


def test_secrets_example_names_every_key_the_manifests_read(rendered):
    example = (MANIFESTS / "secrets.example.env").read_text(encoding="utf-8")
    keys = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    referenced = set()
    for doc in rendered["prod"]:
        for _, pod, _ in pod_specs(doc):
            for container in pod["containers"]:
                for variable in container.get("env", []):
                    ref = variable.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        referenced.add(ref["key"])
                referenced |= {
                    "MLFLOW_TRACKING_URI" for source in container.get("envFrom", []) if "secretRef" in source
                }
    assert referenced <= keys, f"secrets.example.env lacks {sorted(referenced - keys)}"
