//! Forwarding of client requests from a follower to the leader, so that a client behind a
//! Kubernetes Service (one long-lived connection pinned to one member) is served by whichever
//! member it reached. Outcome semantics survive the hop: an error the leader returns passes
//! through unchanged, a forward that never reached the leader is "not applied" (the client may
//! follow the hint itself), and a write whose answer was lost on the way back is "outcome unknown".

use raft_proto::wire;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use raft_proto::pb::kv_client::KvClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Metadata marking a request that was already forwarded once: it is never forwarded again, so a
/// stale leader view on two members cannot bounce a request between them.
pub const FORWARDED: &str = "raft-forwarded";

/// Cached channels to leaders.
#[derive(Default)]
pub struct Forwarder {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Ok(channels) = self.channels.lock()
            && let Some(c) = channels.get(addr)
        {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("leader address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        if let Ok(mut channels) = self.channels.lock() {
            channels.insert(addr.to_string(), channel.clone());
        }
        Ok(channel)
    }

    /// Send `message` to the leader at `addr` with `call`, within `deadline`.
    /// `not_applied` is the error to return when the leader could not be reached at all.
    pub async fn forward<M, R, F, Fut>(
        &self,
        addr: &str,
        message: M,
        deadline: Duration,
        is_write: bool,
        not_applied: impl FnOnce() -> Status,
        call: F,
    ) -> Result<tonic::Response<R>, Status>
    where
        F: FnOnce(KvClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let channel = self.channel(addr)?;
        let mut request = Request::new(message);
        request.set_timeout(deadline);
        request
            .metadata_mut()
            .insert(FORWARDED, MetadataValue::from_static("1"));
        match call(KvClient::new(channel), request).await {
            Ok(response) => Ok(response),
            // The leader answered with raftd's own error: pass it through as is.
            Err(status) if status.metadata().get(wire::OUTCOME).is_some() => Err(status),
            Err(status) if never_reached(&status) => {
                if let Ok(mut channels) = self.channels.lock() {
                    channels.remove(addr);
                }
                Err(not_applied())
            }
            Err(status) if is_write => {
                let mut unknown = Status::unknown(format!(
                    "outcome unknown: forwarded to the leader at {addr}, the answer was lost ({}: {})",
                    status.code(),
                    status.message()
                ));
                unknown.metadata_mut().insert(
                    wire::OUTCOME,
                    MetadataValue::from_static(wire::OUTCOME_UNKNOWN),
                );
                unknown.metadata_mut().insert(
                    wire::ERROR_KIND,
                    MetadataValue::from_static(wire::KIND_OUTCOME_UNKNOWN),
                );
                Err(unknown)
            }
            Err(_) => Err(not_applied()),
        }
    }
}

/// Whether the forward failed before the request could reach the leader.
fn never_reached(status: &Status) -> bool {
    let mut text = status.message().to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(&e.to_string());
        source = e.source();
    }
    text.contains("tcp connect error")
        || text.contains("Connection refused")
        || text.contains("error trying to connect")
        || text.contains("dns error")
}
