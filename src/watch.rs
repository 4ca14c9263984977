//! Watches that survive a misbehaving API server: after any error a watch starts over with a
//! fresh list (kube-runtime's watcher relists only on HTTP 410 and otherwise resumes from its
//! old resource version forever, so an operator left running across an API-server restart on
//! fresh storage never saw objects created afterwards), and [`WatchHealth`] tells `/readyz`
//! whether every watch is live.

use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// First wait before a failed watch starts over; it doubles with each failure in a row.
pub const RESTART_DELAY_MIN: Duration = Duration::from_millis(800);
/// Longest wait between attempts while the API server stays unreachable.
pub const RESTART_DELAY_MAX: Duration = Duration::from_secs(15);

/// Wait before the `failures`-th restart in a row (1 or more): 0.8 s doubling to 15 s.
pub fn restart_delay(failures: u32) -> Duration {
    RESTART_DELAY_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RESTART_DELAY_MAX)
}

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

/// A watcher of `api` that starts over with a fresh list after **any** error, waiting
/// [`restart_delay`] first, and reports under `name` in `health` whether it is live (its list
/// completed and no error since).
///
/// Starting over on every error, not only on 410, is what makes it survive an API server that
/// came back on fresh storage: resuming from an old resource version then either fails with
/// "Too large resource version" (which the default client retries for minutes) or waits for
/// events that never come. A fresh list is cheap next to that, and errors are rare: a watch that
/// simply times out is resumed without one.
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
    let start = move || watcher::watcher(api.clone(), config.clone()).boxed();
    struct State<S> {
        inner: S,
        failures: u32,
        name: String,
        health: WatchHealth,
    }
    let state = State {
        inner: start(),
        failures: 0,
        name: name.to_string(),
        health,
    };
    futures::stream::unfold(state, move |mut st| {
        let start = start.clone();
        async move {
            // Errors are handled here and never passed on: the controller backs off its whole
            // trigger stream on every error it sees (up to 30 s each), so a few watches failing
            // together during an outage would hold back every event for minutes after it.
            loop {
                match st.inner.next().await? {
                    Ok(event) => {
                        if matches!(event, Event::InitDone) {
                            st.failures = 0;
                            st.health.set(&st.name, true);
                        }
                        return Some((Ok(event), st));
                    }
                    Err(err) => {
                        st.failures = st.failures.saturating_add(1);
                        st.health.set(&st.name, false);
                        let delay = restart_delay(st.failures);
                        tracing::warn!(watch = %st.name, error = %err, failures = st.failures, retry_in_ms = delay.as_millis() as u64, "watch failed; starting over with a fresh list");
                        tokio::time::sleep(delay).await;
                        st.inner = start();
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_from_under_a_second_to_fifteen_seconds() {
        let millis: Vec<u128> = (1..=8).map(|n| restart_delay(n).as_millis()).collect();
        assert_eq!(millis, [800, 1600, 3200, 6400, 12800, 15000, 15000, 15000]);
        assert_eq!(restart_delay(u32::MAX), RESTART_DELAY_MAX);
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
