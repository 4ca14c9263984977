//! One probe attempt (httpGet, tcpSocket, exec) and probe timing, as the kubelet defines them.
//! HTTP and TCP probes go from the host to the pod IP over the bridge; exec probes run inside
//! the pod's namespaces through `pod-exec`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::runtime::LaunchSpec;

/// Timing of a probe with Kubernetes defaults filled in.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Wait before the first attempt.
    pub initial_delay: Duration,
    /// Interval between attempts.
    pub period: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Consecutive successes to count as passing.
    pub success_threshold: i32,
    /// Consecutive failures to count as failing.
    pub failure_threshold: i32,
}

impl Timing {
    /// Reads a probe's timing fields, with the Kubernetes defaults.
    pub fn of(probe: &Probe) -> Self {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
        }
    }
}

/// Runs one attempt. `Ok(true)` means success; errors and failures both count as failure.
pub async fn check(
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
    launch: &LaunchSpec,
) -> Result<bool> {
    let timing = Timing::of(probe);
    if let Some(http) = &probe.http_get {
        let port = resolve_port(&http.port, container)?;
        let host = http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            bail!("httpGet probe: scheme HTTPS is not supported by the sandbox");
        }
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let response = crate::http::get(&host, port, &path, timing.timeout).await?;
        return Ok((200..400).contains(&response.status));
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, container)?;
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        let connected = tokio::time::timeout(
            timing.timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        return Ok(matches!(connected, Ok(Ok(_))));
    }
    if let Some(exec) = &probe.exec {
        let argv = exec.command.clone().unwrap_or_default();
        if argv.is_empty() {
            bail!("exec probe has an empty command");
        }
        let mut command = launch.command(&argv);
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting exec probe")?;
        return match tokio::time::timeout(timing.timeout, child.wait()).await {
            Ok(status) => Ok(status.context("waiting for exec probe")?.success()),
            Err(_) => {
                let _ = child.kill().await;
                Ok(false)
            }
        };
    }
    bail!("probe has no httpGet, tcpSocket or exec handler (grpc is not supported by the sandbox)")
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16> {
    match port {
        IntOrString::Int(p) => {
            u16::try_from(*p).with_context(|| format!("probe port {p} is out of range"))
        }
        IntOrString::String(name) => {
            let found = container
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .with_context(|| {
                    format!(
                        "probe port {name:?} names no port of container {:?}",
                        container.name
                    )
                })?;
            u16::try_from(found.container_port)
                .with_context(|| format!("port {name:?} is out of range"))
        }
    }
}
