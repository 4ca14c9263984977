//! A write to an address where nothing listens is retried and ends "not applied", not "unknown".
#![allow(clippy::unwrap_used)]
use std::time::Duration;

#[tokio::test]
async fn connection_refused_is_not_applied() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = raft_proto::RaftClient::new(&[format!("127.0.0.1:{port}")])
        .unwrap()
        .with_deadline(Duration::from_millis(500));
    let e = c.put(b"k", b"v").await.unwrap_err();
    println!("{e:?}");
    assert_eq!(e.kind, raft_proto::ErrorKind::DeadlineExceeded, "{e:?}");
    assert!(e.not_applied());
}
