//! Output: server-side Tables printed in kubectl's column layout, and objects as YAML,
//! JSON or names.

use serde_json::Value;

/// Formats Table rows like kubectl: upper-case headers, columns padded by three spaces.
pub fn table(t: &Value, wide: bool, namespace_column: bool, headers: bool) -> Vec<String> {
    let defs = t["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let shown: Vec<usize> = defs
        .iter()
        .enumerate()
        .filter(|(_, d)| wide || d["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    if headers {
        let mut h: Vec<String> = shown
            .iter()
            .map(|&i| defs[i]["name"].as_str().unwrap_or("").to_uppercase())
            .collect();
        if namespace_column {
            h.insert(0, "NAMESPACE".into());
        }
        rows.push(h);
    }
    for r in t["rows"].as_array().into_iter().flatten() {
        let cells = r["cells"].as_array().cloned().unwrap_or_default();
        let mut line: Vec<String> = shown
            .iter()
            .map(|&i| match cells.get(i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "<none>".into(),
                Some(v) => v.to_string(),
            })
            .collect();
        if namespace_column {
            line.insert(
                0,
                r["object"]["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
        }
        rows.push(line);
    }
    align(&rows)
}

pub fn align(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

pub fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_like_kubectl() {
        let t = json!({"columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "Status", "priority": 0}, {"name": "IP", "priority": 1}],
                       "rows": [{"cells": ["web-1", "Running", "10.244.1.2"]}, {"cells": ["a", "Pending", "<none>"]}]});
        let lines = table(&t, false, false, true);
        assert_eq!(
            lines,
            vec!["NAME    STATUS", "web-1   Running", "a       Pending"]
        );
        assert_eq!(
            table(&t, true, false, false)[0],
            "web-1   Running   10.244.1.2"
        );
    }
}
