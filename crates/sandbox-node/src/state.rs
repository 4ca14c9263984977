//! On-disk runtime records shared by the agent (writer) and the fault-injection CLI (reader).
//!
//! Layout under the state directory:
//! - `pods/<uid>/record.json`: where a pod runs (node, zone, netns, IP, host veth, container PIDs);
//! - `pods/<uid>/logs/<container>.log`: the container's stdout and stderr;
//! - `control/zone-down/<zone>`: present while a zone is down (the agent stops heartbeating it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Where one pod runs, as recorded by the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRecord {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Node the pod is bound to.
    pub node: String,
    /// Zone of that node.
    pub zone: String,
    /// Name of the pod's network namespace (`ip netns` name).
    pub netns: String,
    /// Pod IP.
    pub ip: String,
    /// Host end of the pod's veth pair.
    pub host_veth: String,
    /// Container name to the PID of its running process (absent while not running).
    pub containers: BTreeMap<String, i32>,
}

/// Directory of one pod's runtime files.
pub fn pod_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("pods").join(uid)
}

/// Directory of zone-down markers.
pub fn zone_down_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("control").join("zone-down")
}

/// Writes a pod record atomically (write to a temporary file, then rename).
pub fn write_record(state_dir: &Path, record: &PodRecord) -> Result<()> {
    let dir = pod_dir(state_dir, &record.uid);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join("record.json.tmp");
    let json = serde_json::to_vec_pretty(record).context("encoding pod record")?;
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("record.json")).context("renaming pod record into place")?;
    Ok(())
}

/// Lists every pod record the agent has written.
pub fn list_records(state_dir: &Path) -> Result<Vec<PodRecord>> {
    let pods = state_dir.join("pods");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&pods) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pods.display())),
    };
    for entry in entries {
        let path = entry
            .context("listing pod records")?
            .path()
            .join("record.json");
        match std::fs::read(&path) {
            Ok(bytes) => out.push(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(out)
}

/// Finds the record of a running pod by namespace and name.
pub fn find_pod(state_dir: &Path, namespace: &str, name: &str) -> Result<PodRecord> {
    let records = list_records(state_dir)?;
    match records
        .into_iter()
        .find(|r| r.namespace == namespace && r.name == name)
    {
        Some(record) => Ok(record),
        None => bail!(
            "pod {namespace}/{name} is not running on this sandbox (no record under {})",
            state_dir.join("pods").display()
        ),
    }
}

/// Zones currently marked down.
pub fn zones_down(state_dir: &Path) -> Result<Vec<String>> {
    let dir = zone_down_dir(state_dir);
    let mut out = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                out.push(
                    entry
                        .context("listing zone-down markers")?
                        .file_name()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    out.sort();
    Ok(out)
}
