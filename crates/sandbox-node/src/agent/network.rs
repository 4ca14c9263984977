//! Pod networking: one network namespace per pod, a veth pair to the host bridge, an address from
//! the sandbox's own pod range, and routes only to that range and the Service range (no default
//! route, so nothing leaves the machine).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use tracing::debug;

use crate::config::SandboxConfig;
use crate::faults::ip;

/// Hands out pod IPs from `firstPodIp` to the end of `podCidr`, round-robin, never twice at once.
#[derive(Debug)]
pub struct IpAllocator {
    first: u32,
    last: u32,
    next: u32,
    in_use: HashSet<u32>,
}

impl IpAllocator {
    /// Allocator for the configured range.
    pub fn new(config: &SandboxConfig) -> Result<Self> {
        let first: Ipv4Addr = config
            .first_pod_ip
            .parse()
            .context("sandbox config `firstPodIp`")?;
        let (net, _) = config
            .pod_cidr
            .split_once('/')
            .context("sandbox config `podCidr`")?;
        let net: u32 = net
            .parse::<Ipv4Addr>()
            .context("sandbox config `podCidr`")?
            .into();
        let prefix = config.pod_prefix_len()?;
        let broadcast = net | (u32::MAX >> prefix);
        let first = u32::from(first);
        if first <= net || first >= broadcast {
            bail!(
                "sandbox config: `firstPodIp` {} is outside `podCidr` {}",
                config.first_pod_ip,
                config.pod_cidr
            );
        }
        Ok(Self {
            first,
            last: broadcast - 1,
            next: first,
            in_use: HashSet::new(),
        })
    }

    /// Allocates a free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr> {
        let size = self.last - self.first + 1;
        for _ in 0..size {
            let candidate = self.next;
            self.next = if self.next >= self.last {
                self.first
            } else {
                self.next + 1
            };
            if self.in_use.insert(candidate) {
                return Ok(candidate.into());
            }
        }
        bail!("pod IP range exhausted ({size} addresses in use)")
    }

    /// Returns an address to the pool.
    pub fn release(&mut self, addr: Ipv4Addr) {
        self.in_use.remove(&u32::from(addr));
    }
}

/// Names of a pod's network namespace and host veth, derived from its UID (veth names <= 15 chars).
pub fn names_for(uid: &str) -> (String, String) {
    let hex: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(11)
        .collect();
    (format!("sbx-{hex}"), format!("sbx{hex}"))
}

/// Creates the namespace, veth pair and addressing for one pod.
pub fn setup(config: &SandboxConfig, netns: &str, host_veth: &str, addr: Ipv4Addr) -> Result<()> {
    // A leftover from a crashed attempt would make `ip netns add` fail; clear it first.
    teardown(netns, host_veth);
    let prefix = config.pod_prefix_len()?;
    let cidr = format!("{addr}/{prefix}");
    ip(&["netns", "add", netns])?;
    let steps: Vec<Vec<&str>> = vec![
        vec![
            "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
        vec!["link", "set", host_veth, "master", &config.bridge],
        vec!["link", "set", host_veth, "up"],
        vec!["-n", netns, "link", "set", "lo", "up"],
        vec!["-n", netns, "addr", "add", &cidr, "dev", "eth0"],
        vec!["-n", netns, "link", "set", "eth0", "up"],
        vec![
            "-n",
            netns,
            "route",
            "add",
            &config.service_cidr,
            "via",
            &config.gateway,
        ],
    ];
    for step in steps {
        if let Err(e) = ip(&step) {
            teardown(netns, host_veth);
            return Err(e).with_context(|| format!("setting up network namespace {netns}"));
        }
    }
    debug!(netns, host_veth, %addr, "pod network ready");
    Ok(())
}

/// Removes a pod's namespace and veth. Missing pieces are fine.
pub fn teardown(netns: &str, host_veth: &str) {
    let _ = ip(&["link", "del", host_veth]);
    let _ = ip(&["netns", "del", netns]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_in_ifnamsiz() {
        let (ns, veth) = names_for("0b5d6a3c-1e7f-4a2b-9c8d-123456789abc");
        assert_eq!(ns, "sbx-0b5d6a3c1e7");
        assert!(veth.len() <= 15, "{veth}");
    }
}
