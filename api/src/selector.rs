//! Label and field selectors: parsing Kubernetes' string syntax and matching objects.

use std::collections::BTreeMap;

use crate::meta::LabelSelector;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &dyn Fn(&str) -> Option<String>) -> bool {
        let value = labels(&self.key);
        match self.op {
            Op::Equals => value.as_deref() == self.values.first().map(String::as_str),
            Op::NotEquals => value.as_deref() != self.values.first().map(String::as_str),
            Op::In => value.is_some_and(|v| self.values.contains(&v)),
            Op::NotIn => value.is_none_or(|v| !self.values.contains(&v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

/// A parsed label selector: every requirement must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector that selects nothing, as Kubernetes' `labels.Nothing()`.
    pub fn nothing() -> Self {
        Self {
            requirements: vec![Requirement {
                key: String::new(),
                op: Op::In,
                values: vec![],
            }],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses `a=b,c!=d,e in (f,g),!h,i` (Kubernetes' label selector syntax).
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    /// Converts a `metav1.LabelSelector` as Kubernetes' `LabelSelectorAsSelector` does:
    /// a missing selector selects nothing, an empty one everything.
    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        let Some(sel) = sel else {
            return Ok(Self::nothing());
        };
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement {
                key: k.clone(),
                op: Op::Equals,
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            requirements.push(Requirement {
                key: e.key.clone(),
                op,
                values,
            });
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| labels.get(k).cloned();
        self.requirements.iter().all(|r| r.matches(&get))
    }

    /// Matches against the `metadata.labels` map of a JSON object.
    pub fn matches_json(&self, labels: Option<&serde_json::Value>) -> bool {
        let get = |k: &str| {
            labels
                .and_then(|l| l.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        self.requirements.iter().all(|r| r.matches(&get))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r.op {
                Op::Equals => format!("{}={}", r.key, r.values[0]),
                Op::NotEquals => format!("{}!={}", r.key, r.values[0]),
                Op::In => format!("{} in ({})", r.key, r.values.join(",")),
                Op::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!("unexpected ')' in {input:?}")));
                }
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unterminated '(' in {input:?}")));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement {
            key: checked_key(key.trim())?,
            op: Op::DoesNotExist,
            values: vec![],
        });
    }
    for (token, op) in [("!=", Op::NotEquals), ("==", Op::Equals), ("=", Op::Equals)] {
        if let Some((k, v)) = part.split_once(token) {
            let value = v.trim();
            check_value(value)?;
            return Ok(Requirement {
                key: checked_key(k.trim())?,
                op,
                values: vec![value.to_string()],
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = checked_key(words[0])?;
        let rest = words[1].trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("notin") {
            (Op::NotIn, r)
        } else if let Some(r) = rest.strip_prefix("in") {
            (Op::In, r)
        } else {
            return Err(SelectorError(format!(
                "found '{rest}', expected: in, notin, =, ==, !="
            )));
        };
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| {
                SelectorError(format!(
                    "expected '(' ... ')' after '{}' in {part:?}",
                    words[0]
                ))
            })?;
        let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        for v in &values {
            check_value(v)?;
        }
        return Ok(Requirement { key, op, values });
    }
    Ok(Requirement {
        key: checked_key(part)?,
        op: Op::Exists,
        values: vec![],
    })
}

fn checked_key(key: &str) -> Result<String, SelectorError> {
    let errors = crate::validation::label_key(key);
    if errors.is_empty() {
        Ok(key.to_string())
    } else {
        Err(SelectorError(format!(
            "invalid label key \"{key}\": {}",
            errors.join("; ")
        )))
    }
}

fn check_value(value: &str) -> Result<(), SelectorError> {
    let errors = crate::validation::label_value(value);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "invalid label value: \"{value}\": {}",
            errors.join("; ")
        )))
    }
}

/// One `field=value` / `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub negated: bool,
}

/// A parsed field selector (`metadata.name=x,spec.nodeName!=`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_unescaped(input, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, false)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_string(),
                value: unescape(value.trim()),
                negated,
            });
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Matches using `get(field)`, which returns the object's value of a supported field.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let v = get(&r.field).unwrap_or_default();
            (v == r.value) != r.negated
        })
    }

    /// The value an equality term requires of `field`, if any (used to narrow a scan).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && !r.negated)
            .map(|r| r.value.as_str())
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            parts.last_mut().unwrap().push('\\');
            parts.last_mut().unwrap().push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in v.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_based_terms() {
        let s = Selector::parse("app=web,tier!=db,env in (prod, staging),!legacy,team").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "a"),
            ("legacy", "")
        ])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        let notin = Selector::parse("env notin (prod)").unwrap();
        assert!(notin.matches(&labels(&[])));
        assert!(!notin.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn bad_selectors_are_errors() {
        assert!(Selector::parse("app in (a,b").is_err());
        assert!(Selector::parse("a b c").is_err());
        assert!(Selector::parse("-bad-=x").is_err());
    }

    #[test]
    fn missing_label_selector_selects_nothing() {
        let s = Selector::from_label_selector(None).unwrap();
        assert!(!s.matches(&labels(&[("a", "b")])));
        let all = Selector::from_label_selector(Some(&LabelSelector::default())).unwrap();
        assert!(all.matches(&labels(&[])));
    }

    #[test]
    fn field_selector_terms() {
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        let get = |field: &str| match field {
            "spec.nodeName" => Some("n1".to_string()),
            "status.phase" => Some("Running".to_string()),
            _ => None,
        };
        assert!(f.matches(get));
        assert_eq!(f.required_value("spec.nodeName"), Some("n1"));
        let empty_node = FieldSelector::parse("spec.nodeName=").unwrap();
        assert!(empty_node.matches(|_| None));
    }
}
