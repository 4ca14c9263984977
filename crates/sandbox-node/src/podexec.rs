//! The `pod-exec` helper: enter a pod's network namespace, give it private mount and UTS
//! namespaces, bind-mount its volumes and DNS files, set its hostname, then exec the container.
//!
//! The agent starts every container (and every exec probe) through this helper, so the container
//! process itself runs with the pod's view: its own IP, `/etc/resolv.conf`, `/etc/hosts`, hostname
//! and volume paths. Mounts are made in a private mount namespace and never show on the host.
//! A mount point that does not exist on the host is created (empty) and listed in
//! `<state>/created-mountpoints` so `sandbox-down` can remove it.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

/// One bind mount: host `source` appears at `target` inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path the container sees.
    pub target: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

impl BindMount {
    /// Encodes as `source=target[:ro]` for the helper's command line.
    pub fn to_arg(&self) -> String {
        format!(
            "{}={}{}",
            self.source.display(),
            self.target.display(),
            if self.read_only { ":ro" } else { "" }
        )
    }

    /// Parses `source=target[:ro]`.
    pub fn parse(arg: &str) -> Result<Self> {
        let Some((source, rest)) = arg.split_once('=') else {
            bail!("--mount {arg:?}: expected SOURCE=TARGET[:ro]");
        };
        let (target, read_only) = match rest.strip_suffix(":ro") {
            Some(t) => (t, true),
            None => (rest, false),
        };
        if !source.starts_with('/') || !target.starts_with('/') {
            bail!("--mount {arg:?}: SOURCE and TARGET must be absolute paths");
        }
        Ok(Self {
            source: source.into(),
            target: target.into(),
            read_only,
        })
    }
}

/// What the helper needs to set up before exec.
#[derive(Debug, Clone)]
pub struct PodExec {
    /// Path of the network namespace file (`/var/run/netns/<name>`).
    pub netns_path: PathBuf,
    /// Hostname to set in the new UTS namespace.
    pub hostname: String,
    /// Bind mounts, applied in order.
    pub mounts: Vec<BindMount>,
    /// Working directory of the process.
    pub workdir: Option<PathBuf>,
    /// State directory (for the created-mountpoints list).
    pub state_dir: PathBuf,
    /// Program and arguments.
    pub argv: Vec<String>,
}

/// Sets up namespaces and mounts, then replaces this process with the container. Returns only on error.
pub fn run(spec: &PodExec) -> Result<std::convert::Infallible> {
    let Some((program, args)) = spec.argv.split_first() else {
        bail!("pod-exec: no command given");
    };
    let netns = std::fs::File::open(&spec.netns_path)
        .with_context(|| format!("opening network namespace {}", spec.netns_path.display()))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).context("entering the pod's network namespace")?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .context("creating the pod's mount and UTS namespaces")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private to the pod")?;
    for m in &spec.mounts {
        bind(m, &spec.state_dir)?;
    }
    nix::unistd::sethostname(&spec.hostname)
        .with_context(|| format!("setting hostname {:?}", spec.hostname))?;
    let mut command = std::process::Command::new(program);
    command.args(args);
    if let Some(dir) = &spec.workdir {
        command.current_dir(dir);
    }
    let err = command.exec();
    Err(err).with_context(|| format!("executing {program:?}"))
}

fn bind(m: &BindMount, state_dir: &Path) -> Result<()> {
    let source_is_dir = std::fs::metadata(&m.source)
        .with_context(|| format!("volume source {} is missing", m.source.display()))?
        .is_dir();
    if !m.target.exists() {
        if source_is_dir {
            std::fs::create_dir_all(&m.target)
        } else {
            if let Some(parent) = m.target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating mount point parent {}", parent.display()))?;
            }
            std::fs::write(&m.target, b"")
        }
        .with_context(|| format!("creating mount point {}", m.target.display()))?;
        note_created_mountpoint(state_dir, &m.target);
    }
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "bind-mounting {} at {}",
            m.source.display(),
            m.target.display()
        )
    })?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("making {} read-only", m.target.display()))?;
    }
    Ok(())
}

fn note_created_mountpoint(state_dir: &Path, target: &Path) {
    let list = state_dir.join("created-mountpoints");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&list)
        .and_then(|mut f| writeln!(f, "{}", target.display()));
    if let Err(e) = appended {
        eprintln!(
            "pod-exec: could not record created mount point {}: {e}",
            target.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_args_round_trip() {
        let m = BindMount {
            source: "/a/b".into(),
            target: "/data".into(),
            read_only: true,
        };
        assert_eq!(BindMount::parse(&m.to_arg()).expect("parses"), m);
        assert!(BindMount::parse("relative=/x").is_err());
        assert!(BindMount::parse("/nothing").is_err());
    }
}
