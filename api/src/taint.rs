//! Taints and tolerations, as the scheduler and the taint manager both read them.

use crate::core::{Taint, Toleration};

/// The node controller's taints: a node whose lease stopped, and one that says it is
/// not Ready.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Whether `taint` is one the node controller puts on a node that is not Ready.
pub fn is_not_ready(taint: &Taint) -> bool {
    taint.key == UNREACHABLE || taint.key == NOT_READY
}

/// Whether `tol` tolerates `taint` (Kubernetes' `Toleration.ToleratesTaint`): an empty
/// key with `Exists` matches every taint, an empty effect every effect.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let key_ok = tol
        .key
        .as_deref()
        .is_none_or(|k| k.is_empty() || k == taint.key);
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let value_ok = tol.operator.as_deref() == Some("Exists")
        || tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
    key_ok && effect_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn operators_keys_and_effects() {
        let exists = Toleration {
            key: Some("a".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists, &taint("a", "x", "NoSchedule")));
        assert!(!tolerates(&exists, &taint("b", "x", "NoSchedule")));
        let equal = Toleration {
            key: Some("a".into()),
            value: Some("x".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        assert!(tolerates(&equal, &taint("a", "x", "NoExecute")));
        assert!(!tolerates(&equal, &taint("a", "y", "NoExecute")));
        assert!(!tolerates(&equal, &taint("a", "x", "NoSchedule")));
        let everything = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&everything, &taint("any", "", "NoExecute")));
    }
}
