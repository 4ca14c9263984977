//! Command semantics: how each replicated command changes the KV map (memory and redb).
use std::collections::BTreeMap;
use std::io;

use redb::Table;

use crate::types::{Command, CommandResult, Expect};

/// key -> (value, mod_revision)
pub type KvMap = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn store(kv: &mut Table<&[u8], &[u8]>, key: &[u8], value: &[u8], rev: u64) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&(value, rev)).map_err(io_err)?;
    kv.insert(key, bytes.as_slice()).map_err(io_err)?;
    Ok(())
}

/// Applies one command at log index `index`. Deterministic: depends only on the map and command.
pub fn apply(
    map: &mut KvMap,
    kv: &mut Table<&[u8], &[u8]>,
    index: u64,
    cmd: Command,
) -> io::Result<CommandResult> {
    match cmd {
        Command::Put { key, value } => {
            store(kv, &key, &value, index)?;
            let previous = map.insert(key, (value, index));
            Ok(CommandResult {
                revision: index,
                succeeded: true,
                previous,
            })
        }
        Command::Delete { key } => {
            kv.remove(key.as_slice()).map_err(io_err)?;
            let previous = map.remove(&key);
            Ok(CommandResult {
                revision: index,
                succeeded: previous.is_some(),
                previous,
            })
        }
        Command::Cas {
            key,
            expect,
            new_value,
        } => {
            let current = map.get(&key).cloned();
            let holds = match (&expect, &current) {
                (Expect::Absent, None) => true,
                (Expect::Absent, Some(_)) => false,
                (Expect::Value(v), Some((cur, _))) => v == cur,
                (Expect::Value(_), None) => false,
                (Expect::ModRevision(0), None) => true,
                (Expect::ModRevision(r), Some((_, cur))) => r == cur,
                (Expect::ModRevision(_), None) => false,
            };
            if holds {
                match new_value {
                    Some(v) => {
                        store(kv, &key, &v, index)?;
                        map.insert(key, (v, index));
                    }
                    None => {
                        kv.remove(key.as_slice()).map_err(io_err)?;
                        map.remove(&key);
                    }
                }
            }
            Ok(CommandResult {
                revision: index,
                succeeded: holds,
                previous: current,
            })
        }
    }
}
