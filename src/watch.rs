//! Watches that survive a misbehaving API server: a watch whose resource version cannot be
//! resumed (too large after the API server came back on fresh storage, or expired) starts over
//! with a fresh list, and [`WatchHealth`] tells `/readyz` whether every watch is live.
//!
//! kube-runtime's watcher relists only on HTTP 410; on any other error it retries the same
//! resource version forever, so an operator left running across an API-server restart on fresh
//! storage never saw objects created afterwards.

use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

/// Errors in a row after which a watch starts over with a fresh list even when the error does
/// not say that its resource version is unusable.
pub const RELIST_AFTER_ERRORS: u32 = 3;

/// Whether each named watch has completed its list and has not failed since.
#[derive(Clone, Default, Debug)]
pub struct WatchHealth {
    live: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl WatchHealth {
    /// Register a watch, not live until its first list completes.
    pub fn register(&self, name: &str) {
        self.set(name, false);
    }

    fn set(&self, name: &str, live: bool) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), live);
    }

    /// `Ok` when every registered watch is live, else the names of those that are not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let down: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, live)| !**live)
            .map(|(name, _)| name.clone())
            .collect();
        if down.is_empty() { Ok(()) } else { Err(down) }
    }
}

/// Whether a watch error means the resource version it resumes from is unusable, so only a
/// fresh list helps: 410 Gone / Expired, or the API server's "Too large resource version"
/// (504, after it restarted on fresh storage).
pub fn needs_relist(err: &watcher::Error) -> bool {
    let (code, message) = match err {
        watcher::Error::WatchError(status) => (status.code, status.message.as_str()),
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::InitialListFailed(kube::Error::Api(status)) => {
            (status.code, status.message.as_str())
        }
        watcher::Error::NoResourceVersion => return true,
        _ => return false,
    };
    let message = message.to_ascii_lowercase();
    code == 410
        || message.contains("too large resource version")
        || message.contains("resourceversion")
            && (message.contains("expired") || message.contains("too old"))
}

/// A watcher of `api` that starts over with a fresh list when its resource version is unusable
/// (or after [`RELIST_AFTER_ERRORS`] errors in a row), backs off between retries, and reports
/// its liveness under `name` in `health`.
pub fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    name: &str,
    health: WatchHealth,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone + Eq + std::hash::Hash,
{
    health.register(name);
    let start = {
        let (api, config) = (api.clone(), config.clone());
        move || {
            watcher::watcher(api.clone(), config.clone())
                .default_backoff()
                .boxed()
        }
    };
    struct State<S> {
        inner: S,
        errors: u32,
        name: String,
        health: WatchHealth,
    }
    let state = State {
        inner: start(),
        errors: 0,
        name: name.to_string(),
        health,
    };
    futures::stream::unfold(state, move |mut st| {
        let start = start.clone();
        async move {
            let item = st.inner.next().await?;
            match &item {
                Ok(Event::InitDone) => {
                    st.errors = 0;
                    st.health.set(&st.name, true);
                }
                Ok(Event::Apply(_) | Event::Delete(_)) => st.errors = 0,
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(err) => {
                    st.errors += 1;
                    st.health.set(&st.name, false);
                    if needs_relist(err) || st.errors >= RELIST_AFTER_ERRORS {
                        tracing::warn!(watch = %st.name, error = %err, errors = st.errors, "watch cannot resume; starting over with a fresh list");
                        st.inner = start();
                        st.errors = 0;
                    } else {
                        tracing::debug!(watch = %st.name, error = %err, "watch error");
                    }
                }
            }
            Some((item, st))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16, message: &str) -> Box<Status> {
        Box::new(Status::failure(message, "Expired").with_code(code))
    }

    #[test]
    fn unusable_resource_versions_relist_and_passing_errors_do_not() {
        assert!(needs_relist(&watcher::Error::WatchError(status(
            410,
            "too old resource version: 1 (5)"
        ))));
        assert!(needs_relist(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(
                504,
                "Timeout: Too large resource version: 90210, current: 12"
            ))
        )));
        assert!(needs_relist(&watcher::Error::WatchError(status(
            500,
            "The resourceVersion for the provided watch is too old."
        ))));
        assert!(!needs_relist(&watcher::Error::WatchError(status(
            500,
            "etcdserver: request timed out"
        ))));
        assert!(!needs_relist(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(403, "forbidden"))
        )));
    }

    #[test]
    fn health_is_live_only_when_every_watch_is() {
        let health = WatchHealth::default();
        assert_eq!(health.check(), Ok(()));
        health.register("pods");
        health.register("raftclusters");
        assert_eq!(
            health.check(),
            Err(vec!["pods".to_string(), "raftclusters".to_string()])
        );
        health.set("pods", true);
        health.set("raftclusters", true);
        assert_eq!(health.check(), Ok(()));
        health.set("pods", false);
        assert_eq!(health.check(), Err(vec!["pods".to_string()]));
    }
}
