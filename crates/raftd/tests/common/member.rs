//! One raftd process with fixed ports and a data dir, started and killed by the test itself
//! (for tests that need flags or join modes the playground does not use).
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_proto::pb::admin_client::AdminClient;
use raft_proto::pb::{JoinRequest, MemberAddr, StatusRequest, StatusResponse};

/// One raftd process with fixed ports and data dir, restartable.
pub struct Member {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn new(dir: &std::path::Path, id: u64) -> Self {
        Member {
            id,
            grpc: format!("127.0.0.1:{}", port()),
            http: format!("127.0.0.1:{}", port()),
            data: dir.join(format!("node-{id}")),
            log: dir.join(format!("node-{id}.log")),
            child: None,
        }
    }

    /// Starts raftd in join mode `explicit`, as the operator runs it.
    pub fn start(&mut self) {
        self.start_with(&["--join-mode", "explicit"]);
    }

    /// Starts raftd with these flags besides its id, ports and data dir.
    pub fn start_with(&mut self, flags: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(super::raftd_bin())
            .args(["--node-id", &self.id.to_string()])
            .args(["--grpc-listen", &self.grpc, "--http-listen", &self.http])
            .args(flags)
            .arg("--data-dir")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> MemberAddr {
        MemberAddr {
            id: self.id,
            grpc_addr: self.grpc.clone(),
            http_addr: self.http.clone(),
        }
    }

    pub async fn admin(&self) -> AdminClient<tonic::transport::Channel> {
        let start = Instant::now();
        loop {
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
            {
                return AdminClient::new(ch);
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "node {} did not start",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Admin Join of this member into `cluster_id` at `epoch` (created by `recovery_id`).
    pub async fn join(
        &self,
        cluster_id: &str,
        epoch: u64,
        recovery_id: &str,
    ) -> Result<tonic::Response<raft_proto::pb::JoinResponse>, tonic::Status> {
        self.admin()
            .await
            .join(JoinRequest {
                cluster_id: cluster_id.into(),
                epoch,
                recovery_id: recovery_id.into(),
            })
            .await
    }

    pub async fn status(&self) -> StatusResponse {
        self.admin()
            .await
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port, never one this test process handed out before: the kernel may give a
/// just-released port again, and two members on one address talk to themselves (seen once:
/// node 1 failed to bind, and node 3, holding its address, received its own AppendEntries).
pub fn port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}
