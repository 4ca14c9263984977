//! Pod status as the agent observes it: container views and the JSON merge patch that reports
//! phase, podIP, conditions and containerStatuses (restart counts, current and last state).

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// Formats a timestamp as Kubernetes `metav1.Time` does (RFC 3339, whole seconds, UTC).
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    /// Exit code (128+signal when killed by a signal).
    pub exit_code: i32,
    /// Signal that killed it, if any.
    pub signal: Option<i32>,
    /// `Completed` or `Error`.
    pub reason: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// A container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running (yet or again).
    Waiting {
        /// Machine-readable reason, e.g. `ContainerCreating`, `CrashLoopBackOff`.
        reason: String,
        /// Human-readable detail.
        message: String,
    },
    /// Running since.
    Running {
        /// Start time.
        started_at: Timestamp,
    },
    /// Ended and will not be restarted.
    Terminated(Terminated),
}

/// What the agent knows about one container.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// Executable the image maps to.
    pub executable: String,
    /// Current state.
    pub state: State,
    /// Previous termination, if any.
    pub last_terminated: Option<Terminated>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Readiness (readiness probe passing, or running without one).
    pub ready: bool,
    /// PID while running.
    pub pid: Option<i32>,
}

impl ContainerView {
    /// A container that has not started yet.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            executable: String::new(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last_terminated: None,
            restart_count: 0,
            ready: false,
            pid: None,
        }
    }
}

/// Pod phase from container views.
pub fn phase(views: &[ContainerView], sandbox_ready: bool) -> &'static str {
    if !sandbox_ready
        || views
            .iter()
            .all(|v| v.restart_count == 0 && matches!(v.state, State::Waiting { .. }))
    {
        return "Pending";
    }
    if views
        .iter()
        .all(|v| matches!(v.state, State::Terminated(_)))
    {
        let all_ok = views
            .iter()
            .all(|v| matches!(&v.state, State::Terminated(t) if t.exit_code == 0));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    "Running"
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "startedAt": crate::agent::status::rfc3339(t.started_at),
        "finishedAt": crate::agent::status::rfc3339(t.finished_at),
    });
    if let Some(signal) = t.signal {
        v["signal"] = json!(signal);
    }
    v
}

fn state_json(state: &State) -> Value {
    match state {
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}, "running": null, "terminated": null})
        }
        State::Running { started_at } => {
            json!({"running": {"startedAt": crate::agent::status::rfc3339(*started_at)}, "waiting": null, "terminated": null})
        }
        State::Terminated(t) => {
            json!({"terminated": terminated_json(t), "waiting": null, "running": null})
        }
    }
}

/// Condition transition bookkeeping: condition type -> (status, since).
pub type Transitions = HashMap<&'static str, (bool, Timestamp)>;

fn condition(
    transitions: &mut Transitions,
    kind: &'static str,
    status: bool,
    reason: Option<&str>,
) -> Value {
    let since = match transitions.get(kind) {
        Some((was, at)) if *was == status => *at,
        _ => {
            let now = Timestamp::now();
            transitions.insert(kind, (status, now));
            now
        }
    };
    let mut c = json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "lastProbeTime": null,
        "lastTransitionTime": crate::agent::status::rfc3339(since),
    });
    if let Some(reason) = reason.filter(|_| !status) {
        c["reason"] = json!(reason);
    }
    c
}

/// Inputs of a status report.
pub struct Report<'a> {
    /// Pod IP once the sandbox is set up.
    pub pod_ip: Option<&'a str>,
    /// The node's address.
    pub host_ip: &'a str,
    /// When the agent accepted the pod.
    pub start_time: Timestamp,
    /// Container views, in spec order.
    pub views: &'a [ContainerView],
    /// Whether namespaces, network and volumes are ready.
    pub sandbox_ready: bool,
}

/// The JSON merge patch for the pod's status subresource.
pub fn patch(report: &Report<'_>, transitions: &mut Transitions) -> Value {
    let views = report.views;
    let all_ready = !views.is_empty() && views.iter().all(|v| v.ready);
    let phase = phase(views, report.sandbox_ready);
    let containers: Vec<Value> = views
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "image": v.image,
                "imageID": format!("sandbox://{}", v.executable),
                "containerID": v.pid.map(|p| format!("sandbox://{p}")),
                "ready": v.ready,
                "started": matches!(v.state, State::Running { .. }),
                "restartCount": v.restart_count,
                "state": state_json(&v.state),
                "lastState": v.last_terminated.as_ref().map(|t| json!({"terminated": terminated_json(t)})).unwrap_or(json!({})),
            })
        })
        .collect();
    let conditions = vec![
        condition(
            transitions,
            "PodReadyToStartContainers",
            report.sandbox_ready,
            Some("SandboxNotReady"),
        ),
        condition(transitions, "Initialized", true, None),
        condition(transitions, "Ready", all_ready, Some("ContainersNotReady")),
        condition(
            transitions,
            "ContainersReady",
            all_ready,
            Some("ContainersNotReady"),
        ),
        condition(transitions, "PodScheduled", true, None),
    ];
    let ip_list = |ip: Option<&str>| ip.map(|ip| json!([{"ip": ip}])).unwrap_or(Value::Null);
    json!({
        "status": {
            "phase": phase,
            "hostIP": report.host_ip,
            "hostIPs": ip_list(Some(report.host_ip)),
            "podIP": report.pod_ip,
            "podIPs": ip_list(report.pod_ip),
            "startTime": crate::agent::status::rfc3339(report.start_time),
            "conditions": conditions,
            "containerStatuses": containers,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_follows_containers() {
        let mut v = ContainerView::new("c", "echo-server");
        assert_eq!(phase(std::slice::from_ref(&v), true), "Pending");
        v.state = State::Running {
            started_at: Timestamp::now(),
        };
        assert_eq!(phase(std::slice::from_ref(&v), true), "Running");
        assert_eq!(phase(std::slice::from_ref(&v), false), "Pending");
        let t = Terminated {
            exit_code: 1,
            signal: None,
            reason: "Error".into(),
            started_at: Timestamp::now(),
            finished_at: Timestamp::now(),
        };
        v.state = State::Terminated(t);
        assert_eq!(phase(std::slice::from_ref(&v), true), "Failed");
    }

    #[test]
    fn ready_condition_tracks_containers() {
        let mut v = ContainerView::new("c", "echo-server");
        v.state = State::Running {
            started_at: Timestamp::now(),
        };
        let mut transitions = Transitions::new();
        fn report(views: &[ContainerView]) -> Report<'_> {
            Report {
                pod_ip: Some("10.88.1.1"),
                host_ip: "10.88.0.1",
                start_time: Timestamp::now(),
                views,
                sandbox_ready: true,
            }
        }
        let p = patch(&report(std::slice::from_ref(&v)), &mut transitions);
        let ready = |p: &Value| {
            p["status"]["conditions"][2]["status"]
                .as_str()
                .map(str::to_string)
        };
        assert_eq!(ready(&p).as_deref(), Some("False"));
        v.ready = true;
        let p = patch(&report(std::slice::from_ref(&v)), &mut transitions);
        assert_eq!(ready(&p).as_deref(), Some("True"));
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["waiting"],
            Value::Null
        );
    }
}
