//! Data-plane commands: put, get, del, cas, list.
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use raft_proto::pb::cas_request::Expected;
use raft_proto::{ClientError, Consistency, ErrorKind, RaftClient};

use crate::output::OutputFormat;

/// Where the cluster is.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Comma-separated gRPC endpoints of raftd nodes.
    #[arg(
        long,
        global = true,
        env = "RAFTCTL_ENDPOINTS",
        default_value = "127.0.0.1:7001"
    )]
    pub endpoints: String,
    /// Overall deadline per request, in milliseconds (retries included).
    #[arg(
        long,
        global = true,
        env = "RAFTCTL_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub timeout_ms: u64,
}

impl ClusterArgs {
    pub fn client(&self) -> anyhow::Result<RaftClient> {
        Ok(RaftClient::new(&[self.endpoints.as_str()])
            .map_err(|e| anyhow::anyhow!("--endpoints: {e}"))?
            .with_deadline(Duration::from_millis(self.timeout_ms)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// The cluster's read mode (lease or ReadIndex).
    Linearizable,
    /// Leader lease, falling back to ReadIndex.
    Lease,
    /// Quorum round trip.
    #[value(alias = "read_index")]
    ReadIndex,
    /// Local state of the answering node; may be stale.
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::ReadIndex => Consistency::ReadIndex,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    pub value: String,
    /// Fenced write: applied only while TOKEN is lock NAME's current fencing token (NAME:TOKEN).
    #[arg(long, value_parser = crate::lock::parse_fence)]
    pub fence: Option<(String, u64)>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    pub key: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct CasArgs {
    pub key: String,
    /// The new value (omit with --delete).
    pub new_value: Option<String>,
    /// Swap only if the current value equals this.
    #[arg(long, group = "expect")]
    pub expect_value: Option<String>,
    /// Swap only if the key's mod revision equals this.
    #[arg(long, group = "expect")]
    pub expect_revision: Option<u64>,
    /// Swap only if the key does not exist.
    #[arg(long, group = "expect")]
    pub expect_absent: bool,
    /// Delete the key instead of writing a new value.
    #[arg(long)]
    pub delete: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Key prefix ("" lists everything).
    #[arg(default_value = "")]
    pub prefix: String,
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Exit codes: 1 error/not applied, 2 lock not granted, 3 outcome unknown, 4 unavailable.
pub fn exit_code(err: &anyhow::Error) -> std::process::ExitCode {
    match err.downcast_ref::<ClientError>().map(|e| e.kind) {
        Some(ErrorKind::OutcomeUnknown) => std::process::ExitCode::from(3),
        Some(ErrorKind::Unavailable | ErrorKind::DeadlineExceeded) => {
            std::process::ExitCode::from(4)
        }
        _ => std::process::ExitCode::FAILURE,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encoding JSON")?
    );
    Ok(())
}

pub async fn put(a: &PutArgs, out: OutputFormat) -> anyhow::Result<()> {
    let client = a.cluster.client()?;
    let r = match &a.fence {
        Some((lock, token)) => {
            client
                .put_fenced(a.key.as_bytes(), a.value.as_bytes(), lock, *token)
                .await?
        }
        None => client.put(a.key.as_bytes(), a.value.as_bytes()).await?,
    };
    match out {
        OutputFormat::Json => {
            print_json(&serde_json::json!({"key": a.key, "revision": r.revision}))
        }
        OutputFormat::Table => {
            println!("OK revision={}", r.revision);
            Ok(())
        }
    }
}

pub async fn get(a: &GetArgs, out: OutputFormat) -> anyhow::Result<()> {
    let r = a
        .cluster
        .client()?
        .get(a.key.as_bytes(), a.consistency.into())
        .await?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "key": a.key,
            "value": if r.found { serde_json::Value::String(text(&r.value)) } else { serde_json::Value::Null },
            "revision": r.revision,
            "found": r.found,
            "mod_revision": r.mod_revision,
            "stale": r.stale,
            "served_by": r.served_by,
            "node": r.served_by_node,
        })),
        OutputFormat::Table => {
            if !r.found {
                anyhow::bail!("key {:?} not found (revision {})", a.key, r.revision);
            }
            let label = if r.stale { " (stale read)" } else { "" };
            println!("{}{label}", text(&r.value));
            Ok(())
        }
    }
}

pub async fn del(a: &DelArgs, out: OutputFormat) -> anyhow::Result<()> {
    let r = a.cluster.client()?.delete(a.key.as_bytes()).await?;
    match out {
        OutputFormat::Json => print_json(
            &serde_json::json!({"key": a.key, "deleted": r.deleted, "revision": r.revision}),
        ),
        OutputFormat::Table => {
            println!(
                "{} revision={}",
                if r.deleted { "deleted" } else { "not found" },
                r.revision
            );
            Ok(())
        }
    }
}

pub async fn cas(a: &CasArgs, out: OutputFormat) -> anyhow::Result<()> {
    let expected = if let Some(v) = &a.expect_value {
        Expected::ExpectedValue(v.as_bytes().to_vec())
    } else if let Some(r) = a.expect_revision {
        Expected::ExpectedModRevision(r)
    } else if a.expect_absent {
        Expected::ExpectAbsent(true)
    } else {
        anyhow::bail!("cas: give one of --expect-value, --expect-revision or --expect-absent");
    };
    if a.new_value.is_none() && !a.delete {
        anyhow::bail!("cas: give NEW_VALUE or --delete");
    }
    let req = raft_proto::pb::CasRequest {
        key: a.key.as_bytes().to_vec(),
        expected: Some(expected),
        new_value: a.new_value.clone().unwrap_or_default().into_bytes(),
        delete: a.delete,
    };
    let r = a.cluster.client()?.cas(req).await?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "key": a.key,
            "succeeded": r.succeeded,
            "revision": r.revision,
            "current_value": if r.found { serde_json::Value::String(text(&r.current_value)) } else { serde_json::Value::Null },
            "current_mod_revision": r.current_mod_revision,
        })),
        OutputFormat::Table => {
            if r.succeeded {
                println!("OK revision={}", r.revision);
                Ok(())
            } else {
                anyhow::bail!(
                    "compare failed: key {:?} is {} (mod revision {})",
                    a.key,
                    if r.found {
                        format!("{:?}", text(&r.current_value))
                    } else {
                        "absent".into()
                    },
                    r.current_mod_revision
                )
            }
        }
    }
}

pub async fn list(a: &ListArgs, out: OutputFormat) -> anyhow::Result<()> {
    let r = a
        .cluster
        .client()?
        .list(a.prefix.as_bytes(), a.limit, a.consistency.into())
        .await?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "revision": r.revision,
            "stale": r.stale,
            "more": r.more,
            "items": r.items.iter().map(|i| serde_json::json!({
                "key": text(&i.key), "value": text(&i.value), "mod_revision": i.mod_revision
            })).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => {
            for i in &r.items {
                println!("{}\t{}", text(&i.key), text(&i.value));
            }
            if r.more {
                println!("... more keys (raise --limit)");
            }
            Ok(())
        }
    }
}
