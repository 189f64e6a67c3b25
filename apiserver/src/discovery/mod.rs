//! Discovery documents (`/api`, `/apis`, group versions, `/version`) and the OpenAPI v3
//! index kubectl reads to learn that this server validates fields itself.

use serde_json::{Value, json};
use tinykube_api::constants::{KUBE_GIT_VERSION, KUBE_VERSION_MAJOR, KUBE_VERSION_MINOR};

use crate::resources::{self, RESOURCES, ResourceInfo};

pub fn version() -> Value {
    json!({
        "major": KUBE_VERSION_MAJOR,
        "minor": KUBE_VERSION_MINOR,
        "gitVersion": KUBE_GIT_VERSION,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": resources::groups()
            .iter()
            .map(|g| group(g))
            .chain([crate::kubelets::metrics::group()])
            .collect::<Vec<_>>(),
    })
}

pub fn api_group(name: &str) -> Option<Value> {
    if name == crate::kubelets::metrics::GROUP {
        let mut g = crate::kubelets::metrics::group();
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        return Some(g);
    }
    if !resources::groups().contains(&name) {
        return None;
    }
    let mut g = group(name);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

fn resource_entries(r: &ResourceInfo) -> Vec<Value> {
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        main["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        main["categories"] = json!(r.categories);
    }
    let mut out = vec![main];
    for sub in r.subresources {
        out.push(match *sub {
            "scale" => json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced,
                               "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
            "binding" => json!({"name": format!("{}/binding", r.plural), "singularName": "", "namespaced": true,
                                 "kind": "Binding", "verbs": ["create"]}),
            "token" => json!({"name": format!("{}/token", r.plural), "singularName": "", "namespaced": true,
                               "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}),
            "eviction" => json!({"name": format!("{}/eviction", r.plural), "singularName": "", "namespaced": true,
                                  "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}),
            other => json!({"name": format!("{}/{other}", r.plural), "singularName": "", "namespaced": r.namespaced,
                            "kind": r.kind, "verbs": ["get", "patch", "update"]}),
        });
    }
    out
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version)
        == (
            crate::kubelets::metrics::GROUP,
            crate::kubelets::metrics::VERSION,
        )
    {
        return Some(crate::kubelets::metrics::resource_list());
    }
    let list: Vec<Value> = resources::in_group_version(group, version)
        .flat_map(resource_entries)
        .collect();
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// `/openapi/v3`: one entry per group version.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    paths.insert(
        "api/v1".into(),
        json!({"serverRelativeURL": "/openapi/v3/api/v1?hash=tinykube1"}),
    );
    for g in resources::groups() {
        paths.insert(
            format!("apis/{g}/v1"),
            json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/v1?hash=tinykube1")}),
        );
    }
    json!({"paths": paths})
}

/// A minimal OpenAPI v3 document for one group version: each resource's PATCH operation
/// with its group-version-kind and the `fieldValidation` parameter, which is what
/// kubectl checks before leaving field validation to the server.
pub fn openapi_group_version(path: &str) -> Option<Value> {
    let (group, version) = match path.trim_matches('/') {
        "api/v1" => ("", "v1"),
        p => {
            let rest = p.strip_prefix("apis/")?;
            rest.split_once('/')?
        }
    };
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        ]);
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        paths.insert(
            item,
            json!({
                "patch": {"operationId": format!("patch{}", r.kind), "parameters": params.clone(),
                          "responses": {"200": {"description": "OK"}}, "x-kubernetes-group-version-kind": gvk.clone()},
                "put": {"operationId": format!("replace{}", r.kind), "parameters": params.clone(),
                        "responses": {"200": {"description": "OK"}}, "x-kubernetes-group-version-kind": gvk.clone()},
            }),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_subresource_is_advertised() {
        let list = resource_list("apps", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments/scale"));
        assert!(names.contains(&"deployments/status"));
        assert!(resource_list("apps", "v2").is_none());
    }

    #[test]
    fn openapi_lists_every_group_version() {
        let idx = openapi_index();
        for g in resources::groups() {
            let key = format!("apis/{g}/v1");
            assert!(idx["paths"].get(&key).is_some());
            assert!(openapi_group_version(&key).is_some());
        }
        let core = openapi_group_version("api/v1").unwrap();
        assert!(core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"].is_object());
    }
}
