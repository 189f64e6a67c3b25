//! From a pod's spec to what containerd runs: the command line, environment (values,
//! downward API, configMap and secret references), volumes and resource limits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::api::Api;

use super::tokens::{TokenFile, TokenFiles};
use crate::runtime::image::ResolvedImage;
use crate::runtime::spec::{Mount, cpu_quota, cpu_shares};

/// A reason the kubelet cannot build a container's config (Kubernetes shows these as
/// `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Kubernetes' `$(VAR)` expansion: references to defined variables are replaced,
/// `$$` escapes a `$`, and unknown references stay as written.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some(v) = vars.get(name) {
                    out.push_str(v);
                } else {
                    out.push_str(&s[i..i + 3 + end]);
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The argv of a container: command + args, with the image's entrypoint and cmd
/// filling in what the pod leaves out (Kubernetes' rules).
pub fn argv(c: &Container, image: &ResolvedImage, vars: &HashMap<String, String>) -> Vec<String> {
    let exp = |v: &Vec<String>| v.iter().map(|s| expand(s, vars)).collect::<Vec<_>>();
    match (&c.command, &c.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let mut v = exp(cmd);
            v.extend(args.as_ref().map(exp).unwrap_or_default());
            v
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut v = image.entrypoint();
            v.extend(exp(args));
            v
        }
        _ => {
            let mut v = image.entrypoint();
            v.extend(image.cmd());
            v
        }
    }
}

/// Pod facts the downward API can expose.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: String,
    pub host_ip: String,
}

fn field_ref(path: &str, f: &PodFacts<'_>) -> Result<String, ConfigError> {
    let m = &f.pod.metadata;
    let spec = f.pod.spec.as_ref();
    let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let v = match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => f.pod_ip.clone(),
        "status.podIPs" => f.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => f.host_ip.clone(),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                label(&m.labels, k)
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                label(&m.annotations, k)
            } else {
                return Err(ConfigError(format!("unsupported fieldRef {p:?}")));
            }
        }
    };
    Ok(v)
}

/// Fetches configMaps and secrets a pod refers to, once per pod start.
pub struct Sources {
    client: kube::Client,
    namespace: String,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl Sources {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    async fn config_map(&mut self, name: &str) -> Result<Option<ConfigMap>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let got = api
                .get_opt(name)
                .await
                .map_err(|e| ConfigError(format!("cannot read configmap {name:?}: {e}")))?;
            self.config_maps.insert(name.to_string(), got);
        }
        Ok(self.config_maps[name].clone())
    }

    async fn secret(&mut self, name: &str) -> Result<Option<Secret>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let got = api
                .get_opt(name)
                .await
                .map_err(|e| ConfigError(format!("cannot read secret {name:?}: {e}")))?;
            self.secrets.insert(name.to_string(), got);
        }
        Ok(self.secrets[name].clone())
    }

    /// The key/value pairs of a configMap (data and binaryData).
    pub async fn config_map_data(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.config_map(name).await?.map(|cm| {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            out.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            out
        }))
    }

    pub async fn secret_data(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.secret(name).await?.map(|s| {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            out.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            out
        }))
    }
}

/// The environment of a container: image env, then envFrom, then env (later wins),
/// with `$(VAR)` expansion, plus the `kubernetes` Service's variables.
pub async fn environment(
    c: &Container,
    image: &ResolvedImage,
    facts: &PodFacts<'_>,
    sources: &mut Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut order: Vec<String> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set =
        |order: &mut Vec<String>, vars: &mut HashMap<String, String>, k: String, v: String| {
            if !vars.contains_key(&k) {
                order.push(k.clone());
            }
            vars.insert(k, v);
        };
    for kv in image.env() {
        if let Some((k, v)) = kv.split_once('=') {
            set(&mut order, &mut vars, k.to_string(), v.to_string());
        }
    }
    let hostname = facts.pod.metadata.name.clone().unwrap_or_default();
    set(&mut order, &mut vars, "HOSTNAME".into(), hostname);
    for (k, v) in [
        (
            "KUBERNETES_SERVICE_HOST",
            tinykube_api::constants::KUBERNETES_SERVICE_IP.to_string(),
        ),
        ("KUBERNETES_SERVICE_PORT", "443".to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443".to_string()),
        (
            "KUBERNETES_PORT",
            format!(
                "tcp://{}:443",
                tinykube_api::constants::KUBERNETES_SERVICE_IP
            ),
        ),
    ] {
        set(&mut order, &mut vars, k.into(), v);
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, name, optional, what) = if let Some(r) = &from.config_map_ref {
            (
                sources.config_map_data(&r.name).await?,
                r.name.clone(),
                r.optional.unwrap_or(false),
                "configmap",
            )
        } else if let Some(r) = &from.secret_ref {
            (
                sources.secret_data(&r.name).await?,
                r.name.clone(),
                r.optional.unwrap_or(false),
                "secret",
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(
                        &mut order,
                        &mut vars,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(ConfigError(format!("{what} \"{name}\" not found"))),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_ref(&f.field_path, facts)?
            } else if let Some(r) = &src.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                match sources.config_map_data(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, sources.namespace, r.name
                            )));
                        }
                    },
                    None if optional => continue,
                    None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &src.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                match sources.secret_data(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, sources.namespace, r.name
                            )));
                        }
                    },
                    None if optional => continue,
                    None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &src.resource_field_ref {
                resource_field(c, &r.resource)
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut order, &mut vars, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars[&k].clone();
            (k, v)
        })
        .collect())
}

fn resource_field(c: &Container, resource: &str) -> String {
    let (kind, name) = resource.split_once('.').unwrap_or(("", resource));
    let r = c.resources.as_ref();
    let map = match kind {
        "limits" => r.and_then(|r| r.limits.as_ref()),
        "requests" => r.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let q = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    match (name, q.and_then(|q| tinykube_api::quantity::milli(&q))) {
        ("cpu", Some(m)) => ((m + 999) / 1000).to_string(),
        (_, Some(m)) => (m / 1000).to_string(),
        ("cpu", None) => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string(),
        _ => "0".into(),
    }
}

/// cgroup settings from a container's requests and limits.
pub fn resources(c: &Container) -> (Option<i64>, Option<u64>, Option<i64>) {
    let r = c.resources.as_ref();
    let get =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| {
            m.and_then(|m| m.get(k))
                .and_then(|q| tinykube_api::quantity::milli(&q.0))
        };
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let memory = get(limits, "memory").map(|m| (m / 1000) as i64);
    let cpu_limit = get(limits, "cpu");
    let cpu_request = get(requests, "cpu").or(cpu_limit);
    (
        memory,
        Some(cpu_shares(cpu_request.unwrap_or(0) as i64)),
        cpu_limit.map(|l| cpu_quota(l as i64)),
    )
}

/// The files a configMap or secret becomes: its keys, or the `items` chosen, each
/// with its path and mode.
fn keyed<'a>(
    files: &'a BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    mode: u32,
) -> Vec<(String, &'a Vec<u8>, u32)> {
    match items {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                files
                    .get(&i.key)
                    .map(|v| (i.path.clone(), v, i.mode.map_or(mode, |m| m as u32)))
            })
            .collect(),
        None => files.iter().map(|(k, v)| (k.clone(), v, mode)).collect(),
    }
}

fn write_files(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    mode: u32,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| {
        ConfigError(format!(
            "cannot write volume files in {}: {e}",
            dir.display()
        ))
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    for (path, data, mode) in keyed(files, items, mode) {
        if path.split('/').any(|p| p == "..") {
            return Err(ConfigError(format!(
                "volume path {path:?} must not contain '..'"
            )));
        }
        let target = dir.join(&path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(io)?;
        }
        std::fs::write(&target, data).map_err(io)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// The files of a projected volume (service-account token, configMaps, secrets, the
/// pod's own fields), written into `dir` file by file, so a container that has the
/// directory mounted sees later renewals of the token.
async fn project(
    v: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    dir: &Path,
    pod: &Pod,
    sources: &mut Sources,
    tokens: &TokenFiles,
) -> Result<(), ConfigError> {
    let mode = v.default_mode.map_or(0o644, |m| m as u32);
    let io = |e: std::io::Error| {
        ConfigError(format!(
            "cannot write volume files in {}: {e}",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let put = |path: &str, data: &[u8], mode: u32| -> Result<(), ConfigError> {
        if path.split('/').any(|p| p == "..") || path.starts_with('/') {
            return Err(ConfigError(format!(
                "volume path {path:?} must be relative and not contain '..'"
            )));
        }
        let target = dir.join(path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(io)?;
        }
        super::tokens::write_atomically(&target, data, mode).map_err(io)
    };
    let meta = &pod.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    for s in v.sources.iter().flatten() {
        if let Some(t) = &s.service_account_token {
            let account = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default");
            let file = TokenFile::new(
                ns,
                account,
                meta.name.as_deref().unwrap_or_default(),
                meta.uid.as_deref().unwrap_or_default(),
                t.audience.clone().filter(|a| !a.is_empty()),
                t.expiration_seconds.unwrap_or(3600),
                mode,
            );
            if t.path.split('/').any(|p| p == "..") {
                return Err(ConfigError(format!(
                    "volume path {:?} must not contain '..'",
                    t.path
                )));
            }
            tokens
                .write(&sources.client, &dir.join(&t.path), file)
                .await
                .map_err(|e| ConfigError(e.0))?;
        }
        if let Some(cm) = &s.config_map {
            match sources.config_map_data(&cm.name).await? {
                Some(d) => {
                    for (p, data, m) in keyed(&d, cm.items.as_ref(), mode) {
                        put(&p, data, m)?;
                    }
                }
                None if cm.optional.unwrap_or(false) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", cm.name))),
            }
        }
        if let Some(sec) = &s.secret {
            match sources.secret_data(&sec.name).await? {
                Some(d) => {
                    for (p, data, m) in keyed(&d, sec.items.as_ref(), mode) {
                        put(&p, data, m)?;
                    }
                }
                None if sec.optional.unwrap_or(false) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", sec.name))),
            }
        }
        if let Some(d) = &s.downward_api {
            for item in d.items.iter().flatten() {
                let Some(f) = &item.field_ref else {
                    continue;
                };
                let value = match f.field_path.as_str() {
                    "metadata.namespace" => ns.to_string(),
                    "metadata.name" => meta.name.clone().unwrap_or_default(),
                    "metadata.uid" => meta.uid.clone().unwrap_or_default(),
                    other => {
                        return Err(ConfigError(format!(
                            "downwardAPI field {other:?} is not supported (metadata.name, metadata.namespace, metadata.uid are)"
                        )));
                    }
                };
                put(
                    &item.path,
                    value.as_bytes(),
                    item.mode.map_or(mode, |m| m as u32),
                )?;
            }
        }
    }
    Ok(())
}

/// Makes each volume of the pod ready on the node; returns where each one lives.
pub async fn prepare_volumes(
    pod: &Pod,
    volumes: &[Volume],
    pod_dir: &Path,
    sources: &mut Sources,
    tokens: &TokenFiles,
) -> Result<HashMap<String, PathBuf>, ConfigError> {
    let mut out = HashMap::new();
    for v in volumes {
        let dir = pod_dir.join("volumes").join(&v.name);
        let io =
            |e: std::io::Error| ConfigError(format!("cannot prepare volume {:?}: {e}", v.name));
        let path = if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            dir
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&p).map_err(io)?,
                Some("FileOrCreate") if !p.exists() => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&p, b"").map_err(io)?;
                }
                Some("Directory") if !p.is_dir() => {
                    return Err(ConfigError(format!(
                        "hostPath type check failed: {} is not a directory",
                        h.path
                    )));
                }
                Some("File") if !p.is_file() => {
                    return Err(ConfigError(format!(
                        "hostPath type check failed: {} is not a file",
                        h.path
                    )));
                }
                _ => {}
            }
            p
        } else if let Some(cm) = &v.config_map {
            let name = cm.name.clone();
            match sources.config_map_data(&name).await? {
                Some(d) => write_files(
                    &dir,
                    &d,
                    cm.items.as_ref(),
                    cm.default_mode.map_or(0o644, |m| m as u32),
                )?,
                None if cm.optional.unwrap_or(false) => {
                    write_files(&dir, &BTreeMap::new(), None, 0o644)?
                }
                None => return Err(ConfigError(format!("configmap \"{name}\" not found"))),
            }
            dir
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match sources.secret_data(&name).await? {
                Some(d) => write_files(
                    &dir,
                    &d,
                    s.items.as_ref(),
                    s.default_mode.map_or(0o644, |m| m as u32),
                )?,
                None if s.optional.unwrap_or(false) => {
                    write_files(&dir, &BTreeMap::new(), None, 0o644)?
                }
                None => return Err(ConfigError(format!("secret \"{name}\" not found"))),
            }
            dir
        } else if let Some(p) = &v.projected {
            project(p, &dir, pod, sources, tokens).await?;
            dir
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: only emptyDir, hostPath, configMap, secret and projected volumes are supported",
                v.name
            )));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Bind mounts for a container's volumeMounts.
pub fn volume_mounts(
    c: &Container,
    volumes: &HashMap<String, PathBuf>,
    read_only_volumes: &[String],
) -> Result<Vec<Mount>, ConfigError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(src) = volumes.get(&m.name) else {
            return Err(ConfigError(format!(
                "volume mount {:?} refers to no volume of the pod",
                m.name
            )));
        };
        let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sp) if sp.split('/').any(|p| p == "..") => {
                return Err(ConfigError(format!("subPath {sp:?} must not contain '..'")));
            }
            Some(sp) => {
                let p = src.join(sp);
                if !p.exists() {
                    let _ = std::fs::create_dir_all(&p);
                }
                p
            }
            None => src.clone(),
        };
        let ro = m.read_only.unwrap_or(false) || read_only_volumes.contains(&m.name);
        out.push(Mount::bind(&src.to_string_lossy(), &m.mount_path, ro));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_like_kubernetes() {
        let vars = HashMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("héllo $(A)", &vars), "héllo x");
    }

    #[test]
    fn command_and_args_follow_the_image_rules() {
        let image = ResolvedImage {
            name: "i".into(),
            manifest_digest: "d".into(),
            config: serde_json::json!({"config": {"Entrypoint": ["/ep"], "Cmd": ["c1"]}}),
            top_chain_id: "x".into(),
            size: 0,
        };
        let vars = HashMap::new();
        let c = |command: Option<Vec<&str>>, args: Option<Vec<&str>>| Container {
            name: "c".into(),
            command: command.map(|v| v.into_iter().map(String::from).collect()),
            args: args.map(|v| v.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        assert_eq!(argv(&c(None, None), &image, &vars), ["/ep", "c1"]);
        assert_eq!(argv(&c(None, Some(vec!["a"])), &image, &vars), ["/ep", "a"]);
        assert_eq!(argv(&c(Some(vec!["/x"]), None), &image, &vars), ["/x"]);
        assert_eq!(
            argv(&c(Some(vec!["/x"]), Some(vec!["y"])), &image, &vars),
            ["/x", "y"]
        );
    }
}
