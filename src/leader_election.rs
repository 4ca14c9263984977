//! Operator high availability: only the holder of a coordination.k8s.io Lease reconciles.
//! Take-over uses the Lease's resourceVersion (optimistic concurrency), so two replicas can never
//! both believe they hold it; a holder that cannot renew in time stops reconciling.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;

/// Lease timings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
}

/// Why leadership could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// API call failed.
    #[error("lease {name}: {source}")]
    Kube {
        /// Lease name.
        name: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// Renewal did not succeed within the lease duration.
    #[error("lost the leader lease {0}: not renewed in time")]
    Lost(String),
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0 + SignedDuration::from_secs(secs) < now
}

/// Try once to take or renew the lease. Ok(true) when this replica holds it now.
async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, LeaseError> {
    let kube_err = |source| LeaseError::Kube {
        name: cfg.name.clone(),
        source,
    };
    let now = Timestamp::now();
    let mut spec = LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.duration.as_secs()).unwrap_or(15)),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    };
    match api.get_opt(&cfg.name).await.map_err(kube_err)? {
        None => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(source) => Err(kube_err(source)),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let mine = current.holder_identity.as_deref() == Some(cfg.identity.as_str());
            if !mine && !expired(&current, now) {
                return Ok(false);
            }
            spec.acquire_time = if mine {
                current.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            };
            spec.lease_transitions =
                Some(current.lease_transitions.unwrap_or(0) + i32::from(!mine));
            lease.spec = Some(spec);
            // replace carries resourceVersion: a concurrent take-over makes this fail with 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(source) => Err(kube_err(source)),
            }
        }
    }
}

/// Block until this replica holds the lease.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) -> Result<(), LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut announced = false;
    loop {
        match try_acquire(&api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return Ok(());
            }
            Ok(false) => {
                if !announced {
                    tracing::info!(lease = %cfg.name, "another replica leads; standing by");
                    announced = true;
                }
            }
            Err(err) => tracing::warn!(error = %err, "leader election attempt failed"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renew forever; returns an error once the lease could not be renewed for its whole duration
/// or another replica took it.
pub async fn hold(client: &Client, cfg: &LeaseConfig) -> LeaseError {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(&api, cfg).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => return LeaseError::Lost(cfg.name.clone()),
            Err(err) => tracing::warn!(error = %err, "lease renewal failed"),
        }
        // Stop a little before the lease could be taken, so two leaders never overlap.
        if last_renewed.elapsed() + cfg.renew_every >= cfg.duration {
            return LeaseError::Lost(cfg.name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry_uses_renew_time_and_duration() {
        let now = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let spec = |renewed: i64| LeaseSpec {
            renew_time: Some(MicroTime(
                Timestamp::from_second(renewed).unwrap_or(Timestamp::UNIX_EPOCH),
            )),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec(990), now));
        assert!(expired(&spec(984), now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}
