//! Peer admission of an empty node in join mode `auto`: it adopts a cluster identity only from
//! a decoded, valid message of a leader that its own configuration names, so one stray or
//! malformed RPC cannot pin a foreign cluster on it.
#![allow(clippy::unwrap_used)]
mod common;

use common::member::{Member, port};
use raft_proto::pb::PeerRequest;
use raft_proto::pb::raft_peer_client::RaftPeerClient;
use raftd::types::{TypeConfig, Vote};

fn append(from_term: u64, leader: u64) -> Vec<u8> {
    let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(from_term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    postcard::to_stdvec(&req).unwrap()
}

fn vote_request(term: u64, candidate: u64) -> Vec<u8> {
    let req = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(term, candidate), None);
    postcard::to_stdvec(&req).unwrap()
}

fn peer_request(cluster_id: &str, from: u64, payload: Vec<u8>) -> PeerRequest {
    PeerRequest {
        cluster_id: cluster_id.into(),
        from,
        payload,
        epoch: 1,
        recovery_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_node_adopts_only_a_valid_leader_message_of_its_configured_cluster() {
    let _serial = common::serial().await;
    let dir = common::tempdirs::Dir::new("admission");
    let mut node = Member::new(&dir.0, 1);
    let initial = format!(
        "1={},2=127.0.0.1:{},3=127.0.0.1:{}",
        node.grpc,
        port(),
        port()
    );
    node.start_with(&["--join-mode", "auto", "--initial-cluster", &initial]);
    node.admin().await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut peer = RaftPeerClient::new(ch);

    // A foreign cluster's valid AppendEntries from a node not in --initial-cluster.
    let e = peer
        .append_entries(peer_request("foreign", 9, append(5, 9)))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("not in its --initial-cluster"),
        "{}",
        e.message()
    );
    // A malformed payload under a member's id and a plausible cluster id.
    let e = peer
        .append_entries(peer_request("c1", 2, vec![0xff; 32]))
        .await
        .unwrap_err();
    assert!(e.message().contains("payload"), "{}", e.message());
    // A candidate's vote request is no reason to join anything.
    let e = peer
        .vote(peer_request("c1", 2, vote_request(3, 2)))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("only from a leader"),
        "{}",
        e.message()
    );
    let s = node.status().await;
    assert_eq!(
        s.cluster_id, "",
        "no identity was adopted from a refused message: {s:?}"
    );

    // A member's leader message is admitted, and its identity adopted.
    peer.append_entries(peer_request("c1", 2, append(3, 2)))
        .await
        .unwrap();
    let s = node.status().await;
    assert_eq!((s.cluster_id.as_str(), s.epoch), ("c1", 1));
    // From now on another cluster is refused by name.
    let e = peer
        .append_entries(peer_request("foreign", 2, append(4, 2)))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("cluster id mismatch"),
        "{}",
        e.message()
    );
}
