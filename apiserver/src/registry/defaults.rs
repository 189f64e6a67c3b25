//! Defaulting, as Kubernetes' `SetDefaults_*` functions fill in what a client left out.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, Namespace, NamespaceSpec, NamespaceStatus, PodSpec, PodTemplateSpec, Service,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tinykube_api::constants::LABEL_NAMESPACE_NAME;

fn container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or_default();
        let last = image.rsplit('/').next().unwrap_or(image);
        let latest = !last.contains(':') || last.ends_with(":latest");
        let pinned = image.contains('@');
        c.image_pull_policy = Some(
            if latest && !pinned {
                "Always"
            } else {
                "IfNotPresent"
            }
            .into(),
        );
    }
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}

pub fn pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    if spec.service_account_name.is_none() {
        spec.service_account_name = Some(
            spec.service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
        );
    }
    spec.service_account = spec.service_account_name.clone();
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        container(c);
    }
}

fn template(t: &mut PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        pod_spec(spec);
    }
}

pub fn deployment(d: &mut Deployment) {
    let Some(spec) = d.spec.as_mut() else { return };
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if kind == "RollingUpdate" {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    template(&mut spec.template);
}

pub fn replica_set(rs: &mut ReplicaSet) {
    let Some(spec) = rs.spec.as_mut() else { return };
    spec.replicas.get_or_insert(1);
    if let Some(t) = spec.template.as_mut() {
        template(t);
    }
}

pub fn service(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else { return };
    let kind = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    if kind == "ExternalName" {
        return;
    }
    let affinity = spec.session_affinity.get_or_insert_with(|| "None".into());
    if affinity == "ClientIP" {
        // timeoutSeconds defaults to 3 hours (Kubernetes' DefaultClientIPServiceAffinitySeconds).
        let c = spec
            .session_affinity_config
            .get_or_insert_with(Default::default)
            .client_ip
            .get_or_insert_with(Default::default);
        c.timeout_seconds.get_or_insert(10800);
    }
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    let external = kind == "NodePort"
        || kind == "LoadBalancer"
        || spec.external_ips.as_ref().is_some_and(|e| !e.is_empty());
    if external {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    } else {
        // A service that stops being reachable from outside loses its external policy,
        // as Kubernetes drops type-dependent fields.
        spec.external_traffic_policy = None;
    }
    if kind != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
        spec.health_check_node_port = None;
    }
    if spec.cluster_ip.as_deref() != Some("None") {
        spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
        spec.ip_family_policy
            .get_or_insert_with(|| "SingleStack".into());
    }
    for p in spec.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        if p.target_port.is_none() {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
}

pub fn namespace(ns: &mut Namespace) {
    let name = ns.metadata.name.clone().unwrap_or_default();
    ns.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL_NAMESPACE_NAME.into(), name);
    ns.spec.get_or_insert_with(|| NamespaceSpec {
        finalizers: Some(vec!["kubernetes".into()]),
    });
    let status = ns.status.get_or_insert_with(NamespaceStatus::default);
    status.phase.get_or_insert_with(|| "Active".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_policy_follows_the_tag() {
        let mut spec = PodSpec {
            containers: vec![
                Container {
                    name: "a".into(),
                    image: Some("nginx".into()),
                    ..Default::default()
                },
                Container {
                    name: "b".into(),
                    image: Some("nginx:1.25".into()),
                    ..Default::default()
                },
                Container {
                    name: "c".into(),
                    image: Some("localhost:5000/app".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        pod_spec(&mut spec);
        let policies: Vec<_> = spec
            .containers
            .iter()
            .map(|c| c.image_pull_policy.clone().unwrap())
            .collect();
        assert_eq!(policies, ["Always", "IfNotPresent", "Always"]);
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
    }

    #[test]
    fn service_target_port_defaults_to_port() {
        let mut s: Service = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .unwrap();
        service(&mut s);
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.target_port, Some(IntOrString::Int(80)));
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
    }
}
