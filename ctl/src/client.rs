//! The CLI's connection: kubeconfig lookup like kubectl, resource names resolved through
//! discovery, and raw requests whose errors read like kubectl's.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use http::Request;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

/// A resource as discovery describes it.
#[derive(Debug, Clone)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
}

impl Resource {
    /// `deployment.apps` or `pod`, the prefix of `-o name`.
    pub fn type_name(&self) -> String {
        let k = self.kind.to_lowercase();
        if self.group.is_empty() {
            k
        } else {
            format!("{k}.{}", self.group)
        }
    }

    pub fn url(&self, ns: Option<&str>, name: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        let mut url = match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        };
        if let Some(n) = name {
            url.push('/');
            url.push_str(n);
        }
        url
    }
}

/// Who to act as (`--as`, `--as-group`, `--as-uid`), sent as kube-apiserver's
/// `Impersonate-*` headers.
#[derive(Debug, Default)]
pub struct Impersonate {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

pub struct Ctx {
    pub client: kube::Client,
    pub namespace: String,
    resources: Vec<Resource>,
}

fn kubeconfig_path(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        let first = std::env::split_paths(&p)
            .next()
            .context("KUBECONFIG is empty")?;
        return Ok(first);
    }
    let home =
        std::env::var_os("HOME").context("neither --kubeconfig, KUBECONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

impl Ctx {
    pub async fn connect(
        kubeconfig: Option<PathBuf>,
        namespace: Option<String>,
        impersonate: Impersonate,
    ) -> Result<Self> {
        let path = kubeconfig_path(kubeconfig)?;
        let kc = Kubeconfig::read_from(&path)
            .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("invalid kubeconfig {}", path.display()))?;
        if let Some(user) = impersonate.user {
            config.auth_info.impersonate = Some(user);
            config.auth_info.impersonate_uid = impersonate.uid;
            if !impersonate.groups.is_empty() {
                config.auth_info.impersonate_groups = Some(impersonate.groups);
            }
        } else if !impersonate.groups.is_empty() {
            bail!("requesting uid or groups for impersonation requires specifying a user (--as)");
        }
        let default_ns = config.default_namespace.clone();
        let client =
            kube::Client::try_from(config).context("cannot build a client from the kubeconfig")?;
        Ok(Self {
            client,
            namespace: namespace.unwrap_or(default_ns),
            resources: Vec::new(),
        })
    }

    async fn discover(&mut self) -> Result<()> {
        if !self.resources.is_empty() {
            return Ok(());
        }
        let mut lists = vec![
            self.client
                .list_core_api_resources("v1")
                .await
                .map_err(server_error)?,
        ];
        for g in self
            .client
            .list_api_groups()
            .await
            .map_err(server_error)?
            .groups
        {
            if let Some(v) = g.preferred_version.or_else(|| g.versions.first().cloned()) {
                lists.push(
                    self.client
                        .list_api_group_resources(&v.group_version)
                        .await
                        .map_err(server_error)?,
                );
            }
        }
        for list in lists {
            let (group, version) = match list.group_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), list.group_version.clone()),
            };
            for r in list.resources.into_iter().filter(|r| !r.name.contains('/')) {
                self.resources.push(Resource {
                    group: group.clone(),
                    version: version.clone(),
                    singular: if r.singular_name.is_empty() {
                        r.kind.to_lowercase()
                    } else {
                        r.singular_name
                    },
                    plural: r.name,
                    kind: r.kind,
                    namespaced: r.namespaced,
                    short_names: r.short_names.unwrap_or_default(),
                });
            }
        }
        Ok(())
    }

    /// Resolves `pods`, `pod`, `po`, `deployment.apps`, `Deployment` ... to a resource.
    pub async fn resource(&mut self, name: &str) -> Result<Resource> {
        self.discover().await?;
        let lower = name.to_lowercase();
        let (base, group) = match lower.split_once('.') {
            Some((b, g)) => (b.to_string(), Some(g.to_string())),
            None => (lower.clone(), None),
        };
        self.resources
            .iter()
            .find(|r| {
                group.as_ref().is_none_or(|g| *g == r.group)
                    && (r.plural == base
                        || r.singular == base
                        || r.kind.to_lowercase() == base
                        || r.short_names.contains(&base))
            })
            .cloned()
            .ok_or_else(|| anyhow!("the server doesn't have a resource type \"{name}\""))
    }

    pub async fn resource_for_kind(&mut self, api_version: &str, kind: &str) -> Result<Resource> {
        self.discover().await?;
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
            .ok_or_else(|| anyhow!("no matches for kind \"{kind}\" in version \"{api_version}\""))
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Value> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        req = req.header(http::header::ACCEPT, accept.unwrap_or("application/json"));
        let text = self
            .client
            .request_text(req.body(body)?)
            .await
            .map_err(server_error)?;
        serde_json::from_str(&text).context("the server sent a body that is not JSON")
    }

    pub async fn merge_patch(&self, url: &str, patch: &Value) -> Result<Value> {
        let body = serde_json::to_vec(patch)?;
        self.send(
            "PATCH",
            url,
            Some("application/merge-patch+json"),
            None,
            body,
        )
        .await
    }

    pub async fn get_json(&self, url: &str) -> Result<Value> {
        self.send("GET", url, None, None, Vec::new()).await
    }
}

/// kubectl's form: `Error from server (NotFound): pods "x" not found`.
pub fn server_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => {
            if s.reason.is_empty() {
                anyhow!("Error from server: {}", s.message)
            } else {
                anyhow!("Error from server ({}): {}", s.reason, s.message)
            }
        }
        other => anyhow!("cannot reach the server: {other}"),
    }
}

pub fn ensure(cond: bool, msg: &str) -> Result<()> {
    if !cond {
        bail!("{msg}");
    }
    Ok(())
}
