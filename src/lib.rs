//! The raft-operator library (placeholder).
