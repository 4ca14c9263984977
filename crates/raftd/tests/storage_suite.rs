//! Runs openraft's storage conformance suite against the redb log store and state machine.
#![allow(clippy::unwrap_used)]

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use raftd::store::{LogStore, StateMachineStore, open_database};
use raftd::types::TypeConfig;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_database(dir.path()).expect("open redb");
        let sm = StateMachineStore::open(db.clone()).expect("open state machine");
        Ok((dir, LogStore::new(db), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbBuilder)
        .await
        .expect("openraft storage suite");
}
