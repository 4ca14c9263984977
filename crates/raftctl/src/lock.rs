//! Lock commands: `raftctl lock acquire|renew|release|status|watch|run`, and the parsing of
//! durations and `--fence NAME:TOKEN` shared with `put`.
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use raft_proto::pb::{LockEvent, LockInfo};
use raft_proto::{Consistency, ErrorKind};
use tokio::time::Instant;

use crate::kv::ClusterArgs;
use crate::output::{OutputFormat, print_json};

/// The lock is held by someone else (exit code 2): not an error of the tool.
#[derive(Debug, thiserror::Error)]
#[error("lock {lock} not granted: held by {holder} (token {token}) until {expires_at}")]
pub struct NotGranted {
    pub lock: String,
    pub holder: String,
    pub token: u64,
    pub expires_at: String,
}

/// `lock run` ends with the command's exit code (128 + signal when it was killed).
#[derive(Debug, thiserror::Error)]
#[error("command exited with code {0}")]
pub struct ExitWith(pub u8);

/// Parses `1500ms`, `10s`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 2m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        other => return Err(format!("unit {other:?} in {s:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

/// Parses `--fence NAME:TOKEN` (the name may itself contain ':').
pub fn parse_fence(s: &str) -> Result<(String, u64), String> {
    let (name, token) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--fence {s:?}: expected NAME:TOKEN"))?;
    if name.is_empty() {
        return Err(format!("--fence {s:?}: the lock name is empty"));
    }
    let token: u64 = token
        .parse()
        .map_err(|_| format!("--fence {s:?}: token {token:?} is not a positive integer"))?;
    if token == 0 {
        return Err(format!("--fence {s:?}: token 0 is never issued"));
    }
    Ok((name.to_string(), token))
}

/// Unix milliseconds as RFC 3339 UTC (`2026-01-31T12:00:00.250Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    )
}

fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "raftctl".to_string());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Acquire a lock (prints the fencing token); exit code 2 when held by someone else.
    Acquire(AcquireArgs),
    /// Extend the lease of a lock you hold.
    Renew(RenewArgs),
    /// Release a lock you hold.
    Release(ReleaseArgs),
    /// Who holds a lock and until when.
    Status(StatusArgs),
    /// Stream a lock's changes (grant, renew, release, expiry) as they are applied.
    Watch(WatchArgs),
    /// Acquire (waiting), run a command while holding the lock, renew it every ttl/3, kill the
    /// command if the lease is lost, release at the end. Exit code mirrors the command.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    pub name: String,
    /// Holder id (default: HOSTNAME-PID).
    #[arg(long)]
    pub holder: Option<String>,
    /// Lease length, e.g. 10s.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub ttl: Duration,
    /// Block up to this long until granted (first in, first out), e.g. 30s.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub wait: Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    pub name: String,
    #[arg(long)]
    pub token: u64,
    /// New lease length (default: the lock's TTL).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    pub name: String,
    #[arg(long)]
    pub token: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub name: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    pub name: String,
    /// Exit (code 0) as soon as the lock is free.
    #[arg(long)]
    pub until_free: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub name: String,
    /// Holder id (default: HOSTNAME-PID).
    #[arg(long)]
    pub holder: Option<String>,
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub ttl: Duration,
    /// How long to wait for the lock before giving up (exit code 2).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub wait: Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The command and its arguments (after `--`). It gets RAFT_LOCK_NAME, RAFT_LOCK_TOKEN and
    /// RAFT_LOCK_FENCE=NAME:TOKEN (for `raftctl put --fence`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn info_json(i: Option<&LockInfo>) -> serde_json::Value {
    match i {
        None => serde_json::Value::Null,
        Some(i) => serde_json::json!({
            "holder": i.holder,
            "token": i.token,
            "granted_at": rfc3339_ms(i.granted_at_ms),
            "expires_at": rfc3339_ms(i.expires_at_ms),
            "granted_at_ms": i.granted_at_ms,
            "expires_at_ms": i.expires_at_ms,
            "ttl_ms": i.ttl_ms,
            "term": i.term,
            "epoch": i.epoch,
            "grant_index": i.grant_index,
        }),
    }
}

pub async fn run(cmd: &LockCommand, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        LockCommand::Acquire(a) => acquire(a, out).await,
        LockCommand::Renew(a) => renew(a, out).await,
        LockCommand::Release(a) => release(a, out).await,
        LockCommand::Status(a) => status(a, out).await,
        LockCommand::Watch(a) => watch(a, out).await,
        LockCommand::Run(a) => run_holding(a).await,
    }
}

fn not_granted(name: &str, current: Option<&LockInfo>) -> NotGranted {
    NotGranted {
        lock: name.to_string(),
        holder: current.map(|c| c.holder.clone()).unwrap_or_default(),
        token: current.map(|c| c.token).unwrap_or(0),
        expires_at: current
            .map(|c| rfc3339_ms(c.expires_at_ms))
            .unwrap_or_default(),
    }
}

async fn acquire(a: &AcquireArgs, out: OutputFormat) -> anyhow::Result<()> {
    let holder = a.holder.clone().unwrap_or_else(default_holder);
    let r = a
        .cluster
        .client()?
        .acquire_lock(&a.name, &holder, a.ttl, a.wait)
        .await?;
    let cur = r.current.as_ref();
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "lock": a.name,
            "granted": r.granted,
            "token": if r.granted { serde_json::json!(r.token) } else { serde_json::Value::Null },
            "holder": cur.map(|c| c.holder.clone()),
            "expires_at": cur.map(|c| rfc3339_ms(c.expires_at_ms)),
            "expires_at_ms": cur.map(|c| c.expires_at_ms),
            "granted_at_ms": cur.map(|c| c.granted_at_ms),
            "current_token": cur.map(|c| c.token),
            "revision": r.revision,
        }))?,
        OutputFormat::Table => {
            if r.granted {
                println!(
                    "granted lock={} holder={holder} token={} expires_at={}",
                    a.name,
                    r.token,
                    cur.map(|c| rfc3339_ms(c.expires_at_ms)).unwrap_or_default()
                );
            }
        }
    }
    if !r.granted {
        return Err(not_granted(&a.name, cur).into());
    }
    Ok(())
}

async fn renew(a: &RenewArgs, out: OutputFormat) -> anyhow::Result<()> {
    let r = a
        .cluster
        .client()?
        .renew_lock(&a.name, a.token, a.ttl.unwrap_or_default())
        .await?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "lock": a.name, "renewed": true, "current": info_json(r.current.as_ref()), "revision": r.revision,
        })),
        OutputFormat::Table => {
            println!(
                "renewed lock={} token={} expires_at={}",
                a.name,
                a.token,
                r.current
                    .as_ref()
                    .map(|c| rfc3339_ms(c.expires_at_ms))
                    .unwrap_or_default()
            );
            Ok(())
        }
    }
}

async fn release(a: &ReleaseArgs, out: OutputFormat) -> anyhow::Result<()> {
    let r = a.cluster.client()?.release_lock(&a.name, a.token).await?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "lock": a.name, "released": r.released, "revision": r.revision,
        })),
        OutputFormat::Table => {
            println!(
                "{} lock={} revision={}",
                if r.released { "released" } else { "not held" },
                a.name,
                r.revision
            );
            Ok(())
        }
    }
}

async fn status(a: &StatusArgs, out: OutputFormat) -> anyhow::Result<()> {
    let r = a
        .cluster
        .client()?
        .lock_status(&a.name, Consistency::Linearizable)
        .await?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "lock": a.name,
            "held": r.held,
            "current": info_json(r.current.as_ref()),
            "revision": r.revision,
            "epoch": r.epoch,
            "waiters": r.waiters,
        })),
        OutputFormat::Table => {
            match r.current {
                Some(c) => println!(
                    "lock={} holder={} token={} expires_at={} term={} epoch={} waiters={}",
                    a.name,
                    c.holder,
                    c.token,
                    rfc3339_ms(c.expires_at_ms),
                    c.term,
                    c.epoch,
                    r.waiters
                ),
                None => println!("lock={} free (revision {})", a.name, r.revision),
            }
            Ok(())
        }
    }
}

fn print_event(e: &LockEvent, out: OutputFormat) -> anyhow::Result<()> {
    match out {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "lock": e.lock,
                "kind": e.kind,
                "held": e.held,
                "current": info_json(e.current.as_ref()),
                "revision": e.revision,
                "node": e.served_by_node,
            }))
            .context("encoding JSON")?
        ),
        OutputFormat::Table => match &e.current {
            Some(c) => println!(
                "{} lock={} holder={} token={} expires_at={} revision={}",
                e.kind,
                e.lock,
                c.holder,
                c.token,
                rfc3339_ms(c.expires_at_ms),
                e.revision
            ),
            None => println!("{} lock={} free revision={}", e.kind, e.lock, e.revision),
        },
    }
    Ok(())
}

async fn watch(a: &WatchArgs, out: OutputFormat) -> anyhow::Result<()> {
    let mut stream = a.cluster.client()?.watch_lock(&a.name).await?;
    loop {
        let ev = stream
            .message()
            .await
            .with_context(|| format!("watching lock {}", a.name))?;
        let Some(ev) = ev else {
            anyhow::bail!("watch of lock {}: the server closed the stream", a.name);
        };
        print_event(&ev, out)?;
        if a.until_free && !ev.held {
            return Ok(());
        }
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}

async fn run_holding(a: &RunArgs) -> anyhow::Result<()> {
    let holder = a.holder.clone().unwrap_or_else(default_holder);
    let client = a.cluster.client()?;
    // The local lease view is measured from before the request was sent, so it never ends
    // later than the server's.
    let sent = Instant::now();
    let r = client.acquire_lock(&a.name, &holder, a.ttl, a.wait).await?;
    if !r.granted {
        return Err(not_granted(&a.name, r.current.as_ref()).into());
    }
    let token = r.token;
    let mut lease_end = sent + a.ttl;
    eprintln!(
        "raftctl: holding lock {} as {holder} with token {token}",
        a.name
    );
    let (program, args) = a
        .command
        .split_first()
        .context("lock run: give the command after --")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("RAFT_LOCK_NAME", &a.name)
        .env("RAFT_LOCK_TOKEN", token.to_string())
        .env("RAFT_LOCK_FENCE", format!("{}:{token}", a.name))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program:?}"))?;
    let renew_every = a.ttl / 3;
    let mut next_renew = Instant::now() + renew_every;
    let lost = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for the command")?;
                if let Err(e) = client.release_lock(&a.name, token).await {
                    eprintln!("raftctl: releasing lock {}: {e}", a.name);
                }
                let code = exit_code(status);
                if code == 0 {
                    return Ok(());
                }
                return Err(ExitWith(code).into());
            }
            _ = tokio::time::sleep_until(lease_end) => {
                break "lease not renewed before it ended (last renewal attempts failed)".to_string();
            }
            _ = tokio::time::sleep_until(next_renew) => {
                let sent = Instant::now();
                let budget = lease_end.saturating_duration_since(sent);
                match tokio::time::timeout(budget, client.renew_lock(&a.name, token, a.ttl)).await {
                    Ok(Ok(_)) => {
                        lease_end = sent + a.ttl;
                        next_renew = sent + renew_every;
                    }
                    Ok(Err(e)) if e.kind == ErrorKind::Refused => {
                        break format!("renew refused: {e}");
                    }
                    Ok(Err(e)) => {
                        eprintln!("raftctl: renewing lock {}: {e}; retrying", a.name);
                        next_renew = Instant::now() + Duration::from_millis(200).min(renew_every);
                    }
                    Err(_) => break "lease ended while a renewal was in flight".to_string(),
                }
            }
        }
    };
    // A command still running without the lock would be the zombie the fencing token guards
    // against; stop it.
    eprintln!(
        "raftctl: lost lock {} (token {token}): {lost}; killing the command",
        a.name
    );
    let _ = child.start_kill();
    let status = child
        .wait()
        .await
        .context("waiting for the killed command")?;
    Err(ExitWith(exit_code(status)).into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10d").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn fences() {
        assert_eq!(
            parse_fence("jobs/42:1099511627790").unwrap(),
            ("jobs/42".to_string(), 1_099_511_627_790)
        );
        assert_eq!(parse_fence("a:b:7").unwrap(), ("a:b".to_string(), 7));
        assert!(parse_fence("jobs/42").unwrap_err().contains("NAME:TOKEN"));
        assert!(
            parse_fence("jobs/42:x")
                .unwrap_err()
                .contains("not a positive")
        );
        assert!(parse_fence(":5").is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_250), "2000-02-29T00:00:00.250Z");
        assert_eq!(rfc3339_ms(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }
}
