"""The official Kubernetes Python client against a tinykube master.

Run by tests/tests/python_client.rs with KUBECONFIG pointing at the master.
"""

import os
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main() -> int:
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    namespaces = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= namespaces, namespaces

    # The documentation's Deployment, through the typed API.
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nginx-deployment", "labels": {"app": "nginx"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.14.2", "ports": [{"containerPort": 80}]}]},
            },
        },
    }
    created = apps.create_namespaced_deployment("default", body)
    assert created.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
    assert created.spec.strategy.rolling_update.max_surge == "25%"

    apps.patch_namespaced_deployment_scale("nginx-deployment", "default", {"spec": {"replicas": 5}})
    assert apps.read_namespaced_deployment("nginx-deployment", "default").spec.replicas == 5

    svc = core.create_namespaced_service(
        "default",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "nginx"}, "ports": [{"port": 80}]},
        },
    )
    assert 30000 <= svc.spec.ports[0].node_port <= 32767
    assert svc.spec.ports[0].target_port == 80

    # Conflicts and errors arrive as ApiException with Kubernetes' codes.
    try:
        core.create_namespaced_service("default", {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})
        raise AssertionError("duplicate create must fail")
    except ApiException as e:
        assert e.status == 409, e.status
    try:
        core.read_namespaced_pod("missing", "default")
        raise AssertionError("missing pod must 404")
    except ApiException as e:
        assert e.status == 404, e.status

    # Watch sees a pod being created.
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod(
        "default",
        {"metadata": {"name": "watched", "labels": {"w": "1"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    )
    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "watched":
            w.stop()
    assert ("ADDED", "watched") in seen, seen

    pods = core.list_namespaced_pod("default", label_selector="w=1").items
    assert [p.metadata.name for p in pods] == ["watched"]

    apps.delete_namespaced_deployment("nginx-deployment", "default")
    names = [d.metadata.name for d in apps.list_namespaced_deployment("default").items]
    assert "nginx-deployment" not in names, names
    print("python client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
