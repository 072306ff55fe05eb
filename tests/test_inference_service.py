"""The deploy step protects: the InferenceService KServe gets (round trip through the KServe SDK models with
nothing lost, strict field names, the two custom containers and their arguments as our servers parse them,
probes, replicas, canary, resources, non-root, Secrets) and the deploy against a fake API server over real
HTTP: create when absent, merge-patch when present, canary set and removed, wait for Ready of *this*
generation, timeout."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from cutout.cli import app
from cutout.platform import inference_service as isvc
from cutout.platform.kube import INFERENCE_SERVICES
from cutout.platform.launcher import StepFailed, deploy_inference_service, readiness
from cutout.platform.pods import Secrets
from cutout.platform.sdk_models import UnknownFieldError, from_dict, import_kserve, parse_resource, to_dict
from helpers import assert_field_refused

CONFIG = isvc.InferenceServiceConfig(
    name="cutout", namespace="shop", image="registry.example/cutout-serve:1.2", model_uri="models:/cutout/7",
    feedback_uri="s3://shop-feedback/cutout", threshold=0.8, min_replicas=2, max_replicas=6,
    predictor_resources=isvc.Resources("2", "3Gi", "4", "6Gi", gpus=1),
)  # fmt: skip


def _service(**changes) -> dict:
    return to_dict(
        isvc.build_inference_service(isvc.InferenceServiceConfig(**{**CONFIG.__dict__, **changes}))
    )


def _container(service: dict, component: str) -> dict:
    (container,) = service["spec"][component]["containers"]
    return container


# --- the InferenceService ---


def test_round_trip_through_the_kserve_models_loses_nothing():
    service = _service(canary_traffic_percent=10)
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    back = from_dict(service, "V1beta1InferenceService")
    assert isinstance(back, import_kserve().V1beta1InferenceService)
    assert to_dict(back) == service


@pytest.mark.parametrize(
    ("path", "bad", "message"),
    [
        (["spec"], {"predicter": {}}, "V1beta1InferenceServiceSpec has no field 'predicter' (did you mean"),
        (["spec", "transformer"], {"minReplica": 1}, "spec.transformer: V1beta1TransformerSpec has no field"),
        (["spec", "predictor", "containers", 0, "readinessProbe", "httpGet"], {"paht": "/"},
         "containers[0].readinessProbe.httpGet: V1HTTPGetAction has no field 'paht'"),
        (["spec", "predictor"], {"minReplicas": "1"}, "spec.predictor.minReplicas: expected int"),
        (["metadata"], {"labels": ["a"]}, "metadata.labels: expected a mapping"),
    ],
)  # fmt: skip
def test_an_unknown_misspelled_or_mistyped_field_is_an_error(path, bad, message):
    assert_field_refused(_service(), path, bad, message)


def test_another_kind_is_refused():
    with pytest.raises(
        UnknownFieldError, match=re.escape("serving.kserve.io/v1alpha1/InferenceService is not one")
    ):
        parse_resource({**_service(), "apiVersion": "serving.kserve.io/v1alpha1"})


def test_the_predictor_and_transformer_run_our_servers_with_arguments_they_accept():
    from cutout.serve import predictor, transformer

    service = _service()
    assert service["metadata"]["name"] == "cutout"  # = the model name the transformer forwards to
    pred, trans = _container(service, "predictor"), _container(service, "transformer")
    assert pred["command"] == ["python", "-m", "cutout.serve.predictor"]
    assert trans["command"] == ["python", "-m", "cutout.serve.transformer"]
    assert pred["image"] == trans["image"] == "registry.example/cutout-serve:1.2"
    p_args = predictor.build_parser().parse_args(pred["args"])
    assert (p_args.model_name, p_args.model_uri, p_args.host, p_args.http_port) == (
        "cutout", "models:/cutout/7", "0.0.0.0", 8080)  # fmt: skip
    t_args = transformer.build_parser().parse_args(trans["args"])
    assert (t_args.model_name, t_args.feedback_uri, t_args.threshold, t_args.host) == (
        "cutout", "s3://shop-feedback/cutout", 0.8, "0.0.0.0")  # fmt: skip
    assert "--predictor_host" not in trans["args"]  # KServe adds the right one
    assert "--threshold" not in _container(_service(threshold=None), "transformer")["args"]
    given = _container(_service(predictor_host="cutout-predictor.shop"), "transformer")["args"]
    assert transformer.build_parser().parse_args(given).predictor_host == "cutout-predictor.shop"


def test_readiness_probes_replicas_and_resources():
    service = _service()
    for component in ("predictor", "transformer"):
        spec = service["spec"][component]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
        container = _container(service, component)
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert container["ports"] == [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}]
    predictor = _container(service, "predictor")["resources"]
    assert predictor == {"requests": {"cpu": "2", "memory": "3Gi"},
                         "limits": {"cpu": "4", "memory": "6Gi", "nvidia.com/gpu": "1"}}  # fmt: skip
    transformer = _container(service, "transformer")["resources"]
    assert "nvidia.com/gpu" not in transformer["limits"] and transformer["requests"]["cpu"] == "500m"


def test_canary_percentage_is_set_on_both_components_only_when_asked():
    canary = _service(canary_traffic_percent=25)
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert canary["spec"]["transformer"]["canaryTrafficPercent"] == 25
    assert "canaryTrafficPercent" not in _service()["spec"]["predictor"]


def test_non_root_read_only_and_secrets():
    service = _service(secrets=Secrets(mlflow="tracking", s3="minio"))
    for component in ("predictor", "transformer"):
        container = _container(service, component)
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in service["spec"][component]["volumes"]
        assert container["envFrom"] == [{"secretRef": {"name": "tracking"}}]
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
        }
        assert refs["AWS_ACCESS_KEY_ID"] == refs["AWS_SECRET_ACCESS_KEY"] == "minio"


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"min_replicas": 0}, "minReplicas must be at least 1"), ({"max_replicas": 1}, "below minReplicas"),
     ({"threshold": 1.5}, "threshold"), ({"canary_traffic_percent": 101}, "canary"),
     ({"name": "Cutout"}, "not a valid name")],
)  # fmt: skip
def test_invalid_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _service(**changes)


def test_readiness_needs_this_generation_and_a_true_ready_condition():
    ready = {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]}
    assert readiness(ready, 2) == (True, "")
    assert readiness(ready, 3)[0] is False  # the previous generation's Ready says nothing about this one
    failing = {"observedGeneration": 3, "conditions": [
        {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing", "message": "image pull"},
        {"type": "Ready", "status": "False"}]}  # fmt: skip
    ok, why = readiness(failing, 3)
    assert not ok and "RevisionMissing image pull" in why


# --- deploy, against a fake API server (the `fake` and `kube` fixtures of conftest.py) ---


def _deploy(kube, timeout_s: float = 10.0, **changes):
    service = isvc.build_inference_service(isvc.InferenceServiceConfig(**{**CONFIG.__dict__, **changes}))
    return deploy_inference_service(kube, service, timeout_s=timeout_s, poll_s=0.02, on_log=lambda _: None)


def test_deploy_creates_the_service_when_absent_and_waits_until_ready(fake, kube):
    fake.service_script.ready_after = 3
    done = _deploy(kube)
    assert (done.action, done.namespace, done.name, done.generation) == ("created", "shop", "cutout", 1)
    assert done.url == "http://cutout.shop.example.com"
    assert fake.created == [_service()] and fake.patches == []
    reads = [path for method, path in fake.requests if method == "GET" and path.endswith("/cutout")]
    assert len(reads) == 1 + 3  # the existence check, then status reads until Ready
    assert fake.deleted == []


def test_deploy_patches_an_existing_service_and_waits_for_the_new_generation(fake, kube):
    fake.put_service(_service(model_uri="models:/cutout/6"), ready=True)  # generation 1, Ready
    fake.service_script.ready_after = 3
    done = _deploy(kube)
    assert (done.action, done.generation) == ("patched", 2)
    ((content_type, _),) = fake.patches
    assert content_type == "application/merge-patch+json"
    stored = fake.objects[("inferenceservices", "shop", "cutout")]
    assert "models:/cutout/7" in _container(stored, "predictor")["args"]
    assert stored["status"]["observedGeneration"] == 2  # not fooled by generation 1's Ready
    assert fake.created == []


def test_deploy_sets_a_canary_then_a_plain_deploy_removes_it(fake, kube):
    fake.put_service(_service(model_uri="models:/cutout/6"), ready=True)
    fake.service_script.ready_after = 1
    _deploy(kube, canary_traffic_percent=10)
    stored = fake.objects[("inferenceservices", "shop", "cutout")]
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert stored["spec"]["transformer"]["canaryTrafficPercent"] == 10
    _deploy(kube)  # promote: all traffic to the latest revision
    stored = fake.objects[("inferenceservices", "shop", "cutout")]
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert "canaryTrafficPercent" not in stored["spec"]["transformer"]
    assert fake.patches[-1][1]["spec"]["predictor"]["canaryTrafficPercent"] is None


def test_deploy_that_never_becomes_ready_times_out_with_the_reason_and_is_left_in_place(fake, kube):
    fake.service_script.ready_after = None
    with pytest.raises(StepFailed) as failure:
        _deploy(kube, timeout_s=0.3)
    assert failure.value.reason == "Timeout"
    assert "shop/cutout not ready within 0.3 s" in str(failure.value)
    assert "RevisionMissing" in str(failure.value) and "Back-off pulling image" in str(failure.value)
    assert fake.deleted == [] and ("inferenceservices", "shop", "cutout") in fake.objects


def test_deploy_needs_a_namespace(kube):
    with pytest.raises(ValueError, match="needs a namespace"):
        _deploy(kube, namespace=None)


def test_deploy_reads_kube_objects_through_the_kubernetes_client(fake, kube):
    _deploy(kube)
    stored = kube.get(INFERENCE_SERVICES, "shop", "cutout")
    assert stored["metadata"]["generation"] == 1 and stored["status"]["url"].startswith("http://cutout.")
    assert kube.get(INFERENCE_SERVICES, "shop", "absent") is None
    assert kube.delete(INFERENCE_SERVICES, "shop", "cutout") is True
    assert kube.delete(INFERENCE_SERVICES, "shop", "cutout") is False


# --- the command line ---

CLI_ARGS = ["platform", "isvc", "--name", "cutout", "--namespace", "shop",
            "--image", "registry.example/cutout-serve:1.2", "--model-uri", "models:/cutout/7",
            "--feedback-uri", "s3://shop-feedback/cutout", "--threshold", "0.8", "--min-replicas", "2",
            "--max-replicas", "6", "--predictor-cpu", "2:4", "--predictor-memory", "3Gi:6Gi",
            "--predictor-gpus", "1"]  # fmt: skip


def test_dry_run_prints_yaml_that_parses_back_into_the_kserve_models():
    result = CliRunner().invoke(app, [*CLI_ARGS, "--dry-run", "--canary-percent", "30"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert to_dict(parse_resource(printed)) == printed == _service(canary_traffic_percent=30)


def test_dry_run_without_a_namespace_renders_a_kustomize_base():
    result = CliRunner().invoke(app, ["platform", "isvc", "--dry-run", "--namespace", ""])
    assert result.exit_code == 0, result.output
    assert "namespace" not in yaml.safe_load(result.stdout)["metadata"]


def test_deploy_from_the_command_line_uses_the_kubeconfig(fake, tmp_path, monkeypatch):
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                  "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                  "users": [{"name": "me", "user": {"token": "t"}}],
                  "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}]}  # fmt: skip
    (tmp_path / "config").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    fake.service_script.ready_after = 1
    result = CliRunner().invoke(app, CLI_ARGS)
    assert result.exit_code == 0, result.output
    assert "shop/cutout created and ready: http://cutout.shop.example.com" in result.output
    fake.service_script.ready_after = None
    result = CliRunner().invoke(app, [*CLI_ARGS, "--timeout", "1"])
    assert result.exit_code == 1 and "not ready within 1 s" in result.output


def test_check_accepts_rendered_yaml_and_names_a_misspelled_field(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(_service()))
    bad.write_text(yaml.safe_dump(_service()).replace("minReplicas", "minReplica", 1))
    assert CliRunner().invoke(app, ["platform", "check", str(good)]).exit_code == 0
    result = CliRunner().invoke(app, ["platform", "check", str(bad)])
    assert result.exit_code == 2 and "did you mean 'minReplicas'" in result.output
