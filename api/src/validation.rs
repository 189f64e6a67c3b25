//! Name and label validation with Kubernetes' exact messages (apimachinery's
//! `validation.IsDNS1123Label` and friends), plus the field error type they feed.

use std::fmt;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn max_len_msg(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns1123_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
}

/// Errors of `IsDNS1123Label` (names of namespaces, services' port names, ...).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_msg(63));
    }
    if !dns1123_label_ok(s) {
        errs.push(DNS1123_LABEL_MSG.to_string());
    }
    errs
}

/// Errors of `IsDNS1123Subdomain` (names of most objects).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_msg(253));
    }
    if !s.split('.').all(dns1123_label_ok) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    errs
}

/// Errors of `IsDNS1035Label` (Service names).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_msg(63));
    }
    if !(dns1123_label_ok(s) && s.starts_with(|c: char| c.is_ascii_lowercase())) {
        errs.push(DNS1035_LABEL_MSG.to_string());
    }
    errs
}

fn qualified_name_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Errors of `IsQualifiedName` (label and annotation keys: `[prefix/]name`).
pub fn label_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            errs.extend(
                dns1123_subdomain(prefix)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            errs.push(format!("name part {}", max_len_msg(63)));
        }
        if !qualified_name_part_ok(name) {
            errs.push(QUALIFIED_NAME_MSG.to_string());
        }
    }
    if s.matches('/').count() > 1 {
        errs.push(QUALIFIED_NAME_MSG.to_string());
    }
    errs
}

/// Errors of `IsValidLabelValue`.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_msg(63));
    }
    if !s.is_empty() && !qualified_name_part_ok(s) {
        errs.push(LABEL_VALUE_MSG.to_string());
    }
    errs
}

/// The kind of a field error, as apimachinery's `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorType {
    Required,
    Invalid,
    Duplicate,
    NotSupported,
    Forbidden,
    TooLong,
}

impl FieldErrorType {
    /// The `reason` of a `StatusCause`.
    pub fn cause_reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::Duplicate => "FieldValueDuplicate",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
        }
    }
}

/// One validation failure at a field path, printed as Kubernetes prints it:
/// `metadata.name: Invalid value: "Foo": a lowercase RFC 1123 ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub kind: FieldErrorType,
    pub field: String,
    /// The offending value already rendered (quoted for strings), if it is shown.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn invalid(
        field: impl Into<String>,
        value: impl fmt::Debug,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: FieldErrorType::Invalid,
            field: field.into(),
            value: Some(format!("{value:?}")),
            detail: detail.into(),
        }
    }

    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorType::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorType::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: impl fmt::Debug) -> Self {
        Self {
            kind: FieldErrorType::Duplicate,
            field: field.into(),
            value: Some(format!("{value:?}")),
            detail: String::new(),
        }
    }

    pub fn not_supported(
        field: impl Into<String>,
        value: impl fmt::Debug,
        supported: &[&str],
    ) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self {
            kind: FieldErrorType::NotSupported,
            field: field.into(),
            value: Some(format!("{value:?}")),
            detail: format!("supported values: {}", quoted.join(", ")),
        }
    }

    /// The text of the error without the field path (a `StatusCause` message).
    pub fn body(&self) -> String {
        let head = match self.kind {
            FieldErrorType::Required => "Required value".to_string(),
            FieldErrorType::Forbidden => "Forbidden".to_string(),
            FieldErrorType::Invalid => {
                format!("Invalid value: {}", self.value.clone().unwrap_or_default())
            }
            FieldErrorType::Duplicate => format!(
                "Duplicate value: {}",
                self.value.clone().unwrap_or_default()
            ),
            FieldErrorType::NotSupported => format!(
                "Unsupported value: {}",
                self.value.clone().unwrap_or_default()
            ),
            FieldErrorType::TooLong => "Too long".to_string(),
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Validates a `metadata.labels` map.
pub fn labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    path: &str,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        for e in label_key(k) {
            errs.push(FieldError::invalid(path, k, e));
        }
        for e in label_value(v) {
            errs.push(FieldError::invalid(format!("{path}[{k}]"), v, e));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc1123() {
        assert!(dns1123_subdomain("my-app.v1").is_empty());
        assert!(!dns1123_subdomain("My-App").is_empty());
        assert!(!dns1123_subdomain("-x").is_empty());
        assert!(!dns1123_subdomain(&"a".repeat(254)).is_empty());
        assert!(dns1123_label("web-1").is_empty());
        assert!(!dns1123_label("web.1").is_empty());
        assert!(!dns1035_label("1web").is_empty());
    }

    #[test]
    fn labels_follow_qualified_name_rules() {
        assert!(label_key("app.kubernetes.io/name").is_empty());
        assert!(label_key("app").is_empty());
        assert!(!label_key("/app").is_empty());
        assert!(!label_key("a/b/c").is_empty());
        assert!(label_value("").is_empty());
        assert!(label_value("My_Value.1").is_empty());
        assert!(!label_value("bad value").is_empty());
    }

    #[test]
    fn field_error_prints_like_kubernetes() {
        let e = FieldError::invalid("metadata.name", "Foo", dns1123_subdomain("Foo").remove(0));
        assert!(
            e.to_string().starts_with(
                "metadata.name: Invalid value: \"Foo\": a lowercase RFC 1123 subdomain"
            )
        );
        assert_eq!(
            FieldError::required("spec.containers", "").to_string(),
            "spec.containers: Required value"
        );
    }
}
