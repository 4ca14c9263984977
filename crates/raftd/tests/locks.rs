//! Multi-process tests of the lock service on real raftd processes, with real `raftctl` workers:
//! a paused (zombie) worker is fenced out, a `kill -9`ed holder loses its lock soon after its
//! lease ends and a blocked waiter is woken by the expiry, and a leader failover does not end a
//! held lease early.
//!
//! The workers are `raftctl` processes: build it first (`cargo build -p raftctl`, same target
//! dir); the tests look for it next to the raftd binary.
#![allow(clippy::unwrap_used)]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raft_proto::{Consistency, ErrorKind, RaftClient};

fn raftctl_bin() -> PathBuf {
    let p = common::raftd_bin().with_file_name("raftctl");
    assert!(
        p.is_file(),
        "{} not found: build it first with `cargo build -p raftctl` (same CARGO_TARGET_DIR)",
        p.display()
    );
    p
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sends `sig` to process `pid` (a positive pid only: never a group, never -1).
fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    assert!(pid > 1, "refusing to signal pid {pid}");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Sends SIGKILL to the process group `pgid`. Not through the `kill` binary: procps-ng 4.0.2
/// parses `kill -9 -PGID` as `kill -9 -1` when the group is gone, which kills every process.
fn kill_group(pgid: u32) {
    let pgid = libc::pid_t::try_from(pgid).unwrap();
    assert!(pgid > 1, "refusing to signal group {pgid}");
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a group.
    let _ = unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

fn json_u64(text: &str, field: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get(field)?.as_u64()
}

/// Polls the lock's status (test setup only) until `check` holds.
async fn wait_status(
    client: &RaftClient,
    lock: &str,
    what: &str,
    check: impl Fn(&raft_proto::pb::LockStatusResponse) -> bool,
) -> raft_proto::pb::LockStatusResponse {
    let start = Instant::now();
    loop {
        if let Ok(s) = client.lock_status(lock, Consistency::Linearizable).await
            && check(&s)
        {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_worker_is_fenced_out() {
    let raftctl = raftctl_bin();
    let (_serial, dir, guard) = common::up("lock-zombie", 3, &[]).await;
    let c = &guard.0;
    let client = c.client().unwrap();
    let a_json = dir.0.join("worker-a.json");
    // Worker A: acquire (2 s lease), "work" for 1 s, then write its result with its fence.
    let script = format!(
        r#"{r} lock acquire jobs/42 --holder worker-a --ttl 2s -o json > {a}.tmp && mv {a}.tmp {a} || exit 9
sleep 1
token=$(sed -n 's/.*"token": \([0-9]*\).*/\1/p' {a})
exec {r} put jobs/42/result from-worker-a --fence "jobs/42:$token""#,
        r = raftctl.display(),
        a = a_json.display()
    );
    let worker_a = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env("RAFTCTL_ENDPOINTS", c.endpoints())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let a_pid = worker_a.id().unwrap();
    let start = Instant::now();
    let ta = loop {
        if let Some(t) = std::fs::read_to_string(&a_json)
            .ok()
            .and_then(|s| json_u64(&s, "token"))
        {
            break t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "worker A never got the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // A stalls (GC pause, swapped out, SIGSTOP) while it believes it holds the lock.
    signal(a_pid, libc::SIGSTOP);
    let paused_at = Instant::now();

    // Worker B blocks until A's lease is expired by the leader, then writes with its fence.
    let b = client
        .acquire_lock(
            "jobs/42",
            "worker-b",
            Duration::from_secs(10),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert!(b.granted, "worker B not granted: {b:?}");
    let tb = b.token;
    assert!(tb > ta, "token after expiry {tb} is not greater than {ta}");
    client
        .put_fenced(b"jobs/42/result", b"from-worker-b", "jobs/42", tb)
        .await
        .unwrap();

    // A resumes past its TTL and tries to write with its old token.
    signal(a_pid, libc::SIGCONT);
    let paused_for = paused_at.elapsed();
    let resumed_ms = wall_ms();
    let a_lease_end =
        json_u64(&std::fs::read_to_string(&a_json).unwrap(), "expires_at_ms").unwrap();
    let out = worker_a.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "zombie: worker A token {ta}, paused {paused_for:?} (TTL 2 s), resumed {} ms after its lease ended; worker B token {tb}; A's fenced write: exit {:?}, {}",
        resumed_ms as i64 - a_lease_end as i64,
        out.status.code(),
        stderr.trim()
    );
    // A slept through the end of its lease (leader clock and this host's clock are the same).
    assert!(resumed_ms > a_lease_end);
    assert!(!out.status.success(), "zombie's fenced write succeeded");
    assert!(
        stderr.contains(&format!(
            "fenced write rejected: lock jobs/42 token {ta} is not current (current token {tb} held by worker-b)"
        )),
        "{stderr}"
    );
    let g = client
        .get(b"jobs/42/result", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(g.value, b"from-worker-b");
    // The same check through the client API: refused, not an unknown outcome.
    let e = client
        .put_fenced(b"jobs/42/result", b"again", "jobs/42", ta)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_loses_lock_and_waiter_is_woken_by_expiry() {
    let raftctl = raftctl_bin();
    let (_serial, _dir, guard) = common::up("lock-kill9", 3, &[]).await;
    let c = &guard.0;
    let client = c.client().unwrap();
    let ttl = Duration::from_secs(2);
    // The holder renews every ttl/3 while its command runs.
    let mut holder = tokio::process::Command::new(&raftctl)
        .args([
            "lock", "run", "jobs/7", "--holder", "worker-a", "--ttl", "2s", "--",
        ])
        .args(["sleep", "60"])
        .env("RAFTCTL_ENDPOINTS", c.endpoints())
        .process_group(0)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let holder_pid = holder.id().unwrap();
    let held = wait_status(&client, "jobs/7", "worker-a holds jobs/7", |s| {
        s.current.as_ref().is_some_and(|l| l.holder == "worker-a")
    })
    .await;
    let ta = held.current.unwrap().token;

    // A watcher (server stream) and a blocked acquire by worker B.
    let mut watch = client.watch_lock("jobs/7").await.unwrap();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!((first.kind.as_str(), first.held), ("current", true));
    let watcher = tokio::spawn(async move {
        loop {
            let ev = watch.message().await.unwrap().unwrap();
            if !ev.held {
                return (ev, wall_ms());
            }
        }
    });
    let waiter = tokio::process::Command::new(&raftctl)
        .args([
            "lock", "acquire", "jobs/7", "--holder", "worker-b", "--ttl", "2s",
        ])
        .args(["--wait", "20s", "-o", "json"])
        .env("RAFTCTL_ENDPOINTS", c.endpoints())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_status(&client, "jobs/7", "worker B is queued on the leader", |s| {
        s.waiters >= 1
    })
    .await;

    // kill -9 the holder (and its command): no release, no more renewals.
    signal(holder_pid, libc::SIGKILL);
    kill_group(holder_pid);
    let killed_at_ms = wall_ms();
    let _ = holder.wait().await;
    // The lease as last renewed: it must not end before this.
    let lease_end = client
        .lock_status("jobs/7", Consistency::Linearizable)
        .await
        .unwrap()
        .current
        .map(|l| l.expires_at_ms);

    let out = waiter.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "waiter failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tb = json_u64(&stdout, "token").unwrap();
    let granted_at = json_u64(&stdout, "granted_at_ms").unwrap();
    let grant_revision = json_u64(&stdout, "revision").unwrap();
    let (expired, expired_seen_ms) = watcher.await.unwrap();
    assert_eq!(expired.kind, "expired");
    let lease_end = lease_end.unwrap_or(expired_seen_ms);
    let delay_past_ttl = granted_at as i64 - lease_end as i64;
    let watch_delay = expired_seen_ms as i64 - lease_end as i64;
    println!(
        "kill -9: TTL {ttl:?}; holder killed at lease end - {} ms; lock expired and re-granted \
         {delay_past_ttl} ms past the lease end (watch saw the expiry {watch_delay} ms past it); \
         expiry at index {}, waiter's grant at index {grant_revision}; tokens {ta} -> {tb}",
        lease_end as i64 - killed_at_ms as i64,
        expired.revision
    );
    assert!(tb > ta);
    // Not early: the holder's last renewed lease ran out first (leader clock on both sides).
    assert!(
        delay_past_ttl >= 0,
        "lock re-granted {delay_past_ttl} ms before the lease ended"
    );
    assert!(
        delay_past_ttl < 1000,
        "expiry took {delay_past_ttl} ms past the lease end"
    );
    // Granted by an entry after the expiry (other entries, such as another lock's lease keeping,
    // may come between; the bound on the delay past the lease end is checked above).
    assert!(
        grant_revision > expired.revision,
        "the waiter's grant (index {grant_revision}) came before the expiry (index {})",
        expired.revision
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_does_not_expire_a_held_lease_early() {
    let (_serial, _dir, mut guard) = common::up("lock-failover", 3, &[]).await;
    let c = &mut guard.0;
    let client = c.client().unwrap();
    let ttl = Duration::from_secs(3);
    let a = client
        .acquire_lock("jobs/f", "worker-a", ttl, Duration::ZERO)
        .await
        .unwrap();
    assert!(a.granted);
    let before = a.current.unwrap();
    let old_leader = common::leader(c, Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kill(old_leader).unwrap();
    let killed_at_ms = wall_ms();
    let others: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.id != old_leader)
        .map(|n| n.grpc_addr.clone())
        .collect();
    let client = RaftClient::new(&others).unwrap();
    // The new leader's ExtendLeases entry: the lease now ends a full TTL after the new leader
    // took over, which was after the kill (the first leader's own ExtendLeases, at its start,
    // cannot satisfy this).
    let floor = killed_at_ms + ttl.as_millis() as u64;
    let after = wait_status(
        &client,
        "jobs/f",
        "the new leader extended the lease",
        |s| s.current.as_ref().is_some_and(|l| l.expires_at_ms >= floor),
    )
    .await
    .current
    .unwrap();
    let new_leader = common::leader(c, Duration::from_secs(5)).await.unwrap();
    assert_ne!(new_leader, old_leader);
    assert_eq!(after.token, before.token);
    // Well past the original lease end: still held, by the same grant.
    let wait_until = before.expires_at_ms + 500;
    tokio::time::sleep(Duration::from_millis(wait_until.saturating_sub(wall_ms()))).await;
    let s = client
        .lock_status("jobs/f", Consistency::Linearizable)
        .await
        .unwrap();
    let still = s.current.expect("lock expired early after failover");
    assert_eq!(still.token, before.token);
    assert_eq!(still.holder, "worker-a");
    // Then it does end (nobody renews), and the next grant's token is larger.
    let b = client
        .acquire_lock("jobs/f", "worker-b", ttl, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(b.granted);
    let granted_b = b.current.unwrap();
    println!(
        "failover: lease {} ms (token {}, term {}) ended at {}; leader {old_leader} killed {} ms before that; \
         new leader {new_leader} extended it to {} (+{} ms, {} ms after the kill); still held {} ms past the original end; \
         worker B granted {} ms after the extended end with token {} (term {})",
        ttl.as_millis(),
        before.token,
        before.term,
        before.expires_at_ms,
        before.expires_at_ms as i64 - killed_at_ms as i64,
        after.expires_at_ms,
        after.expires_at_ms - before.expires_at_ms,
        after.expires_at_ms - ttl.as_millis() as u64 - killed_at_ms,
        wait_until - before.expires_at_ms,
        granted_b.granted_at_ms as i64 - after.expires_at_ms as i64,
        b.token,
        granted_b.term
    );
    assert!(b.token > before.token);
    assert!(granted_b.term > before.term);
    assert!(granted_b.granted_at_ms >= after.expires_at_ms);
}
