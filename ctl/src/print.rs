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

/// kubectl's `-o jsonpath=TEMPLATE`, the part scripts use: literal text and `{.a.b}`
/// fields, with `[N]` and `[*]` on lists (several values joined by spaces).
pub fn jsonpath(template: &str, v: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| anyhow::anyhow!("error parsing jsonpath {template}, unclosed action"))?;
        let expr = rest[start + 1..start + end].trim();
        let values = select(expr, v)
            .map_err(|e| anyhow::anyhow!("error parsing jsonpath {template}, {e}"))?;
        out.push_str(&texts(&values).join(" "));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// kubectl's `-o custom-columns=HEADER:.path,...`: one row per object.
pub fn custom_columns(spec: &str, objects: &[Value]) -> anyhow::Result<Vec<String>> {
    let columns: Vec<(&str, &str)> = spec
        .split(',')
        .map(|c| {
            c.split_once(':').ok_or_else(|| {
                anyhow::anyhow!("custom-columns format must be HEADER:.field,... (got {c:?})")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rows = vec![
        columns
            .iter()
            .map(|(h, _)| h.to_string())
            .collect::<Vec<_>>(),
    ];
    for o in objects {
        let mut row = Vec::new();
        for (_, path) in &columns {
            let expr = path.trim_start_matches('{').trim_end_matches('}');
            let values = select(expr, o).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            let texts = texts(&values);
            row.push(if texts.is_empty() {
                "<none>".to_string()
            } else {
                texts.join(",")
            });
        }
        rows.push(row);
    }
    Ok(align(&rows))
}

/// Values as kubectl prints them in templates: strings bare, the rest as JSON.
fn texts(values: &[&Value]) -> Vec<String> {
    values
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn select<'a>(expr: &str, v: &'a Value) -> Result<Vec<&'a Value>, String> {
    let path = expr.strip_prefix('.').unwrap_or(expr);
    let mut current = vec![v];
    if path.is_empty() {
        return Ok(current);
    }
    for part in path.split('.') {
        let (field, index) = match part.split_once('[') {
            Some((f, i)) => (
                f,
                Some(
                    i.strip_suffix(']')
                        .ok_or_else(|| format!("unterminated [ in {part}"))?,
                ),
            ),
            None => (part, None),
        };
        let mut next = Vec::new();
        for c in current {
            let c = if field.is_empty() { c } else { &c[field] };
            match index {
                None if !c.is_null() => next.push(c),
                None => {}
                Some("*") => next.extend(c.as_array().into_iter().flatten()),
                Some(i) => {
                    let i: usize = i.parse().map_err(|_| format!("bad index [{i}]"))?;
                    if let Some(x) = c.as_array().and_then(|a| a.get(i)) {
                        next.push(x);
                    }
                }
            }
        }
        current = next;
    }
    Ok(current)
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

    #[test]
    fn jsonpath_reads_fields_and_lists() {
        let v = json!({"items": [{"status": {"podIP": "10.244.1.2"}}, {"status": {"podIP": "10.244.2.2"}}],
                       "spec": {"ports": [{"nodePort": 31234}]}});
        let p = |t: &str| jsonpath(t, &v).unwrap();
        assert_eq!(p("{.items[0].status.podIP}"), "10.244.1.2");
        assert_eq!(p("{.items[*].status.podIP}"), "10.244.1.2 10.244.2.2");
        assert_eq!(p("port={.spec.ports[0].nodePort}\n"), "port=31234\n");
        assert_eq!(p("{.missing}"), "");
        assert!(jsonpath("{.a", &v).is_err());
    }
}
