//! Request validation: key, value and prefix limits, named by field.
use super::*;
use crate::locks::validate_lock_command;
use crate::types::Command;

pub(super) fn validate_key(field: &str, key: &[u8]) -> Result<(), NodeError> {
    if key.is_empty() {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: "must not be empty".into(),
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: format!(
                "{} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
                key.len()
            ),
        });
    }
    Ok(())
}

pub(super) fn validate_value(field: &str, v: &[u8]) -> Result<(), NodeError> {
    if v.len() > MAX_VALUE_BYTES {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: format!(
                "{} bytes exceeds the limit of {MAX_VALUE_BYTES} bytes",
                v.len()
            ),
        });
    }
    Ok(())
}

/// Rejects commands with empty or oversized keys and oversized values.
pub fn validate_command(cmd: &Command) -> Result<(), NodeError> {
    match cmd {
        Command::Put { key, value } => {
            validate_key("key", key)?;
            validate_value("value", value)
        }
        Command::Delete { key } => validate_key("key", key),
        Command::Cas {
            key,
            expect,
            new_value,
        } => {
            validate_key("key", key)?;
            if let crate::types::Expect::Value(v) = expect {
                validate_value("expected_value", v)?;
            }
            if let Some(v) = new_value {
                validate_value("new_value", v)?;
            }
            Ok(())
        }
        Command::FencedPut {
            key, value, lock, ..
        } => {
            validate_key("key", key)?;
            validate_value("value", value)?;
            crate::locks::validate_name("fence_lock", lock)
        }
        other => validate_lock_command(other),
    }
}

pub fn validate_read_key(key: &[u8]) -> Result<(), NodeError> {
    validate_key("key", key)
}

pub fn validate_prefix(prefix: &[u8]) -> Result<(), NodeError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(NodeError::InvalidArgument {
            field: "prefix".into(),
            reason: format!(
                "{} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
                prefix.len()
            ),
        });
    }
    Ok(())
}
