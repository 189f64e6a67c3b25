//! What a pod's worker knows of its pod: the sandbox, each container's state machine
//! (waiting, running, exited, with restart counts and back-off), and the events that
//! move it. Pure: no containerd, no API, so every transition is unit-tested here.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::Value;
use tokio::time::Instant;

/// The id of a pod's sandbox (pause) container in containerd, which also names the
/// shim every container of the pod shares: `<pod uid>-sandbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxId {
    uid: String,
}

impl SandboxId {
    const SUFFIX: &'static str = "-sandbox";

    pub fn for_pod(uid: &str) -> Self {
        Self {
            uid: uid.to_string(),
        }
    }

    pub fn pod_uid(&self) -> &str {
        &self.uid
    }

    pub fn container_id(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for SandboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.uid, Self::SUFFIX)
    }
}

/// The id of one attempt of an app or init container: `<pod uid>-<name>-<attempt>`.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}-{name}-{attempt}")
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub started_at: String,
    pub finished_at: String,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Run {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Exited(Terminated),
}

#[derive(Debug, Clone)]
pub(crate) struct Ctr {
    pub run: Run,
    pub last: Option<Terminated>,
    /// Containers started so far (the next attempt's number).
    pub attempts: u32,
    pub id: Option<String>,
    pub image_id: String,
    pub backoff: Duration,
    /// The back-off of the pending restart (what CrashLoopBackOff reports).
    pub waiting: Duration,
    pub retry_at: Option<Instant>,
    /// Readiness (true without a readiness probe once running).
    pub ready: bool,
    pub probes: Option<tokio::task::AbortHandle>,
}

impl Ctr {
    pub(crate) fn new() -> Self {
        Self {
            run: Run::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            attempts: 0,
            id: None,
            image_id: String::new(),
            backoff: Duration::ZERO,
            waiting: Duration::ZERO,
            retry_at: None,
            ready: false,
            probes: None,
        }
    }

    pub(crate) fn restarts(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }

    pub(crate) fn exited(&self) -> Option<&Terminated> {
        match &self.run {
            Run::Exited(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the container should be started now (first start, retry, or restart by
    /// `policy` once its back-off has passed).
    pub(crate) fn due(&self, policy: &str, now: Instant) -> bool {
        let waited = self.retry_at.is_none_or(|r| now >= r);
        match &self.run {
            Run::Running { .. } => false,
            Run::Waiting { .. } => waited,
            Run::Exited(t) => should_restart(policy, t.exit_code) && waited,
        }
    }

    /// A failure before the container ran (image, config, create): wait `after` and
    /// try again, showing `reason`.
    pub(crate) fn fail_to_start(&mut self, reason: &str, message: String, after: Duration) {
        self.run = Run::Waiting {
            reason: reason.into(),
            message,
        };
        self.retry_at = Some(Instant::now() + after);
    }

    /// An image that could not be had: `ErrImagePull` the first time, then
    /// `ImagePullBackOff`, retried with the restart back-off.
    pub(crate) fn image_failed(&mut self, reason: String, message: String, backoff: &Backoff) {
        let was_pull_error = matches!(&self.run, Run::Waiting { reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff");
        let reason = if was_pull_error && reason == "ErrImagePull" {
            "ImagePullBackOff".into()
        } else {
            reason
        };
        self.run = Run::Waiting { reason, message };
        self.backoff = backoff.next(self.backoff);
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    /// The container's task exited with `exit` at `finished_at`: its attempt is
    /// recorded, and a restart is planned if `policy` wants one (at once the first
    /// time, then after 10 s, 20 s, ... up to the cap, as Kubernetes does).
    pub(crate) fn exited_with(&mut self, exit: Terminated, policy: &str, backoff: &Backoff) {
        if let Some(p) = self.probes.take() {
            p.abort();
        }
        self.ready = false;
        self.id = None;
        self.last = Some(exit.clone());
        if should_restart(policy, exit.exit_code) {
            self.waiting = self.backoff;
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = backoff.next(self.backoff);
        }
        self.run = Run::Exited(exit);
    }
}

/// Kubernetes' container restart back-off: `base` (10 s), doubling up to `max` (5 min).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn next(&self, current: Duration) -> Duration {
        if current.is_zero() {
            self.base
        } else {
            (current * 2).min(self.max)
        }
    }
}

pub(crate) struct Sandbox {
    pub id: SandboxId,
    pub pid: u32,
    pub ip: Ipv4Addr,
}

/// What a worker knows of its pod's containers.
#[derive(Default)]
pub(crate) struct PodState {
    pub sandbox: Option<Sandbox>,
    pub sandbox_error: Option<String>,
    pub sandbox_retry_at: Option<Instant>,
    pub sandbox_backoff: Duration,
    pub containers: HashMap<String, Ctr>,
    pub start_time: Option<String>,
    pub posted: Option<Value>,
}

/// What a pod's worker does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing is due: wait for a change, an exit or the next retry.
    Wait,
    /// Make the sandbox (netns, veth, pause container).
    Sandbox,
    /// Start these containers (one init container, or every app container that is due).
    Start(Vec<String>),
}

impl PodState {
    /// The next step towards `spec`: the sandbox first, then the init containers one at
    /// a time, each to success, then every app container that is due by `policy`.
    pub(crate) fn next_step(&mut self, spec: &PodSpec, policy: &str, now: Instant) -> Step {
        if self.sandbox.is_none() {
            return if self.sandbox_retry_at.is_some_and(|t| now < t) {
                Step::Wait
            } else {
                Step::Sandbox
            };
        }
        for c in spec.init_containers.iter().flatten() {
            let ctr = self
                .containers
                .entry(c.name.clone())
                .or_insert_with(Ctr::new);
            match &ctr.run {
                Run::Exited(t) if t.exit_code == 0 => continue,
                Run::Running { .. } => return Step::Wait,
                // A failed init container is retried unless the pod's policy is Never.
                Run::Exited(_) if policy == "Never" => return Step::Wait,
                Run::Exited(_) | Run::Waiting { .. } => {
                    return if ctr.retry_at.is_some_and(|r| now < r) {
                        Step::Wait
                    } else {
                        Step::Start(vec![c.name.clone()])
                    };
                }
            }
        }
        let due: Vec<String> = spec
            .containers
            .iter()
            .filter(|c| {
                self.containers
                    .entry(c.name.clone())
                    .or_insert_with(Ctr::new)
                    .due(policy, now)
            })
            .map(|c| c.name.clone())
            .collect();
        if due.is_empty() {
            Step::Wait
        } else {
            Step::Start(due)
        }
    }

    /// The sandbox is up: errors and retries are forgotten.
    pub(crate) fn sandbox_ready(&mut self, sandbox: Sandbox) {
        self.sandbox = Some(sandbox);
        self.sandbox_error = None;
        self.sandbox_retry_at = None;
    }

    /// The sandbox could not be made: retry after a back-off doubling from 1 s to `max`.
    pub(crate) fn sandbox_failed(&mut self, error: String, max: Duration) {
        self.sandbox_error = Some(error);
        self.sandbox_backoff = (self.sandbox_backoff * 2).clamp(Duration::from_secs(1), max);
        self.sandbox_retry_at = Some(Instant::now() + self.sandbox_backoff);
    }

    /// The earliest moment something is due (a sandbox retry or a container restart).
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        [self.sandbox_retry_at]
            .into_iter()
            .chain(self.containers.values().map(|c| c.retry_at))
            .flatten()
            .min()
    }

    /// The container whose current attempt is `id`.
    pub(crate) fn by_id(&mut self, id: &str) -> Option<(&String, &mut Ctr)> {
        self.containers
            .iter_mut()
            .find(|(_, c)| c.id.as_deref() == Some(id))
    }
}

/// Liveness or readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// What a pod's worker hears about its containers besides pod updates.
pub(crate) enum Event {
    /// A container's task exited (from the task that waits on it).
    Exited { id: String, code: u32 },
    /// A probe changed state (or a liveness probe failed).
    Probe {
        id: String,
        kind: ProbeKind,
        ok: bool,
        message: String,
    },
}

pub(crate) fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

pub(crate) fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

pub(crate) fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

pub(crate) fn should_restart(policy: &str, code: i32) -> bool {
    policy == "Always" || (policy == "OnFailure" && code != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(300),
    };

    fn exit(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            started_at: "t0".into(),
            finished_at: "t1".into(),
            container_id: "containerd://c".into(),
        }
    }

    #[test]
    fn the_sandbox_id_names_its_pod_and_shim() {
        let id = SandboxId::for_pod("0b5e");
        assert_eq!(id.container_id(), "0b5e-sandbox");
        assert_eq!(id.to_string(), "0b5e-sandbox");
        assert_eq!(id.pod_uid(), "0b5e");
        assert_eq!(container_id("0b5e", "web", 2), "0b5e-web-2");
    }

    #[test]
    fn back_off_doubles_from_the_base_to_the_cap() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..7 {
            d = BACKOFF.next(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashing_container_restarts_at_once_then_backs_off() {
        let mut c = Ctr::new();
        assert!(c.due("Always", Instant::now()), "a new container starts");
        c.run = Run::Running {
            started_at: "t0".into(),
        };
        c.attempts = 1;
        assert!(!c.due("Always", Instant::now()));
        c.exited_with(exit(1), "Always", &BACKOFF);
        assert!(
            c.due("Always", Instant::now()),
            "the first restart is at once"
        );
        assert_eq!(c.waiting, Duration::ZERO);
        c.attempts = 2;
        c.run = Run::Running {
            started_at: "t2".into(),
        };
        c.exited_with(exit(1), "Always", &BACKOFF);
        assert_eq!(c.waiting, Duration::from_secs(10));
        assert!(!c.due("Always", Instant::now()), "the second waits 10 s");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!c.due("Always", Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(c.due("Always", Instant::now()));
        assert_eq!(c.restarts(), 1);
        assert_eq!(c.last.as_ref().map(|t| t.exit_code), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn restart_policies_decide_what_comes_back() {
        for (policy, code, restarts) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 1, false),
        ] {
            let mut c = Ctr::new();
            c.exited_with(exit(code), policy, &BACKOFF);
            assert_eq!(c.due(policy, Instant::now()), restarts, "{policy} {code}");
            assert_eq!(c.retry_at.is_some(), restarts, "{policy} {code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn image_pull_errors_turn_into_back_off() {
        let mut c = Ctr::new();
        c.image_failed("ErrImagePull".into(), "no such image".into(), &BACKOFF);
        assert!(matches!(&c.run, Run::Waiting { reason, .. } if reason == "ErrImagePull"));
        assert_eq!(c.backoff, Duration::from_secs(10));
        c.image_failed("ErrImagePull".into(), "no such image".into(), &BACKOFF);
        assert!(matches!(&c.run, Run::Waiting { reason, .. } if reason == "ImagePullBackOff"));
        assert_eq!(c.backoff, Duration::from_secs(20));
        // Not a pull error: the reason is shown as it is.
        c.image_failed("InvalidImageName".into(), "empty".into(), &BACKOFF);
        assert!(matches!(&c.run, Run::Waiting { reason, .. } if reason == "InvalidImageName"));
    }

    fn spec(inits: &[&str], apps: &[&str]) -> PodSpec {
        let c = |n: &&str| serde_json::json!({"name": n, "image": "toolbox"});
        serde_json::from_value(serde_json::json!({
            "initContainers": inits.iter().map(c).collect::<Vec<_>>(),
            "containers": apps.iter().map(c).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn with_sandbox() -> PodState {
        let mut st = PodState::default();
        st.sandbox_ready(Sandbox {
            id: SandboxId::for_pod("u"),
            pid: 1,
            ip: Ipv4Addr::new(10, 244, 1, 2),
        });
        st
    }

    fn running() -> Run {
        Run::Running {
            started_at: "t0".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sandbox_comes_first_then_init_containers_in_order_then_the_apps() {
        let spec = spec(&["setup", "migrate"], &["web", "sidecar"]);
        let now = Instant::now();
        let mut st = PodState::default();
        assert_eq!(st.next_step(&spec, "Always", now), Step::Sandbox);
        st.sandbox_failed("no address".into(), Duration::from_secs(300));
        assert_eq!(st.next_step(&spec, "Always", Instant::now()), Step::Wait);
        let mut st = with_sandbox();
        assert_eq!(
            st.next_step(&spec, "Always", now),
            Step::Start(vec!["setup".into()])
        );
        st.containers.get_mut("setup").unwrap().run = running();
        assert_eq!(
            st.next_step(&spec, "Always", now),
            Step::Wait,
            "one init container at a time"
        );
        st.containers
            .get_mut("setup")
            .unwrap()
            .exited_with(exit(0), "Always", &BACKOFF);
        assert_eq!(
            st.next_step(&spec, "Always", now),
            Step::Start(vec!["migrate".into()])
        );
        st.containers
            .get_mut("migrate")
            .unwrap()
            .exited_with(exit(0), "Always", &BACKOFF);
        assert_eq!(
            st.next_step(&spec, "Always", now),
            Step::Start(vec!["web".into(), "sidecar".into()]),
            "every app container together once the init containers succeeded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_init_container_blocks_the_apps_and_is_retried_unless_never() {
        let spec = spec(&["setup"], &["web"]);
        let mut st = with_sandbox();
        st.next_step(&spec, "Never", Instant::now());
        st.containers
            .get_mut("setup")
            .unwrap()
            .exited_with(exit(1), "Never", &BACKOFF);
        assert_eq!(st.next_step(&spec, "Never", Instant::now()), Step::Wait);
        let mut st = with_sandbox();
        st.next_step(&spec, "Always", Instant::now());
        let setup = st.containers.get_mut("setup").unwrap();
        setup.exited_with(exit(1), "Always", &BACKOFF);
        setup.exited_with(exit(1), "Always", &BACKOFF);
        assert_eq!(
            st.next_step(&spec, "Always", Instant::now()),
            Step::Wait,
            "backing off"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            st.next_step(&spec, "Always", Instant::now()),
            Step::Start(vec!["setup".into()])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_app_containers_that_are_due_restart() {
        let spec = spec(&[], &["web", "batch"]);
        let mut st = with_sandbox();
        st.next_step(&spec, "OnFailure", Instant::now());
        st.containers.get_mut("web").unwrap().run = running();
        st.containers
            .get_mut("batch")
            .unwrap()
            .exited_with(exit(0), "OnFailure", &BACKOFF);
        assert_eq!(st.next_step(&spec, "OnFailure", Instant::now()), Step::Wait);
        st.containers
            .get_mut("web")
            .unwrap()
            .exited_with(exit(2), "OnFailure", &BACKOFF);
        assert_eq!(
            st.next_step(&spec, "OnFailure", Instant::now()),
            Step::Start(vec!["web".into()])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sandbox_retries_back_off_and_wake_the_worker() {
        let mut st = PodState::default();
        assert_eq!(st.next_wake(), None);
        st.sandbox_failed("no address".into(), Duration::from_secs(300));
        assert_eq!(st.sandbox_backoff, Duration::from_secs(1));
        st.sandbox_failed("no address".into(), Duration::from_secs(300));
        assert_eq!(st.sandbox_backoff, Duration::from_secs(2));
        assert_eq!(st.next_wake(), st.sandbox_retry_at);
        let mut c = Ctr::new();
        c.retry_at = Some(Instant::now() + Duration::from_millis(500));
        st.containers.insert("app".into(), c);
        assert_eq!(
            st.next_wake(),
            Some(Instant::now() + Duration::from_millis(500))
        );
    }
}
