//! Command semantics: how each replicated command changes the in-memory KV map.
use std::collections::BTreeMap;

use crate::types::{Command, CommandResult, Expect};

/// key -> (value, mod_revision)
pub type KvMap = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// Applies one command at log index `index`. Deterministic: depends only on the map and command.
pub fn apply(map: &mut KvMap, index: u64, cmd: Command) -> CommandResult {
    match cmd {
        Command::Put { key, value } => {
            let previous = map.insert(key, (value, index));
            CommandResult {
                revision: index,
                succeeded: true,
                previous,
            }
        }
        Command::Delete { key } => {
            let previous = map.remove(&key);
            CommandResult {
                revision: index,
                succeeded: previous.is_some(),
                previous,
            }
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
                        map.insert(key, (v, index));
                    }
                    None => {
                        map.remove(&key);
                    }
                }
            }
            CommandResult {
                revision: index,
                succeeded: holds,
                previous: current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cas_on_value_and_revision() {
        let mut m = KvMap::new();
        apply(
            &mut m,
            1,
            Command::Put {
                key: b"k".to_vec(),
                value: b"a".to_vec(),
            },
        );
        let r = apply(
            &mut m,
            2,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::Value(b"x".to_vec()),
                new_value: Some(b"b".to_vec()),
            },
        );
        assert!(!r.succeeded);
        let r = apply(
            &mut m,
            3,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::ModRevision(1),
                new_value: Some(b"b".to_vec()),
            },
        );
        assert!(r.succeeded);
        assert_eq!(m.get(b"k".as_slice()).unwrap(), &(b"b".to_vec(), 3));
        let r = apply(
            &mut m,
            4,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::Absent,
                new_value: None,
            },
        );
        assert!(!r.succeeded);
        let r = apply(
            &mut m,
            5,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::ModRevision(3),
                new_value: None,
            },
        );
        assert!(r.succeeded && !m.contains_key(b"k".as_slice()));
    }
}
