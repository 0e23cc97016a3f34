//! Unix implementation.
