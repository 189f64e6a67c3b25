//! Well-known values: kubeadm and flannel defaults, so course material applies unchanged.

/// Cluster (pod) network; each node gets one /24 of it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Where the master publishes the pod network and its overlay backend for the nodes
/// (`kube-system/<configmap>`, key `net-conf.json`, as flannel's `kube-flannel-cfg`).
pub const NETWORK_CONFIGMAP: &str = "tinykube-network";
/// The Leases (in kube-system) of LoadBalancer pool addresses, held by the node that
/// announces each.
pub const LB_LEASE_PREFIX: &str = "tinykube-lb-";
pub const NETWORK_CONFIG_KEY: &str = "net-conf.json";
/// Service network and its two fixed addresses.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";
/// NodePort range, inclusive.
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;
pub const API_SERVER_PORT: u16 = 6443;
pub const KUBELET_PORT: u16 = 10250;
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tinykube";

/// Kubernetes version the API server reports; kubectl warns when the skew is over one minor.
pub const KUBE_VERSION_MAJOR: &str = "1";
pub const KUBE_VERSION_MINOR: &str = "33";
pub const KUBE_GIT_VERSION: &str = "v1.33.0+tinykube";

pub const LABEL_NODE_ROLE_CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Namespaces that exist from the first start.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// This machine's architecture in Go's (and so Kubernetes' and OCI's) words.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
