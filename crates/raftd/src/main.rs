//! raftd entry point: parse flags, start the node, serve gRPC and HTTP until signalled.
use std::process::ExitCode;

use clap::Parser;
use raft_proto::pb::admin_server::AdminServer;
use raft_proto::pb::kv_server::KvServer;
use raft_proto::pb::lock_server::LockServer;
use raft_proto::pb::raft_peer_server::RaftPeerServer;
use raftd::config::Args;
use raftd::grpc::{AdminService, KvService, LockService, PeerService};
use raftd::network::MAX_PEER_MESSAGE_BYTES;
use raftd::node::RaftNode;
use tracing_subscriber::EnvFilter;

/// mimalloc: the request path allocates per message; glibc malloc/free cost ~8% of CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a planned stop (SIGTERM) waits for requests already taken: a write waits at most
/// 5 s for its commit, and a leadership transfer at most 3 s.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_env("RAFTD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    if let Err(e) = args.validate() {
        eprintln!("raftd: {e}");
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let grpc_listen = args.grpc_listen;
    let http_listen = args.http_listen;
    // Bind both ports before starting Raft so a port clash fails fast.
    let grpc_listener = tokio::net::TcpListener::bind(grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--grpc-listen {grpc_listen}: {e}"))?;
    let http_listener = tokio::net::TcpListener::bind(http_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--http-listen {http_listen}: {e}"))?;
    let node = RaftNode::start(args).await?;
    tracing::info!(node = node.id, %grpc_listen, %http_listen, "raftd serving");

    let http = std::future::IntoFuture::into_future(axum::serve(
        http_listener,
        raftd::http::router(node.clone()),
    ));
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            KvServer::new(KvService::new(node.clone()))
                .max_decoding_message_size(raft_proto::pipeline::MAX_BATCH_MESSAGE_BYTES)
                .max_encoding_message_size(raft_proto::pipeline::MAX_BATCH_MESSAGE_BYTES),
        )
        .add_service(LockServer::new(LockService { node: node.clone() }))
        .add_service(AdminServer::new(AdminService { node: node.clone() }))
        .add_service(
            RaftPeerServer::new(PeerService { node: node.clone() })
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        )
        .serve_with_incoming(
            // Nagle's algorithm with delayed ACKs would add ~40 ms to small RPCs.
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
        );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::pin!(grpc, http);
    tokio::select! {
        r = &mut grpc => return r.map_err(|e| anyhow::anyhow!("grpc server: {e}")),
        r = &mut http => return r.map_err(|e| anyhow::anyhow!("http server: {e}")),
        r = shutdown => r?,
    }
    // A planned stop: keep serving while draining, so requests already taken are answered and
    // new ones get a "not applied, draining" answer with the leader's address.
    let drain = node.drain(DRAIN_TIMEOUT);
    let left = tokio::select! {
        r = &mut grpc => return r.map_err(|e| anyhow::anyhow!("grpc server: {e}")),
        r = &mut http => return r.map_err(|e| anyhow::anyhow!("http server: {e}")),
        left = drain => left,
    };
    tracing::info!(requests_unanswered = left, "shutting down");
    let _ = node.raft().shutdown().await;
    Ok(())
}
