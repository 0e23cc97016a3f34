//! Log records on the wire: owned copies of a child's `tracing` events and
//! of the spans around them, as the child's forwarder sends them and the
//! parent re-emits them. No `tracing` types: levels are small integers.

use serde::{Deserialize, Serialize};

/// A field's value, keeping the primitive type `tracing` recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum LogValue {
    /// `record_str`.
    Str(String),
    /// `record_debug` and `record_error`: formatted in the child.
    Fmt(String),
    /// `record_i64`.
    I64(i64),
    /// `record_u64`.
    U64(u64),
    /// `record_f64`.
    F64(f64),
    /// `record_bool`.
    Bool(bool),
}

/// One span of an event's scope in the child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogSpan {
    pub(crate) name: String,
    pub(crate) target: String,
    /// 1 (ERROR) to 5 (TRACE).
    pub(crate) level: u8,
    pub(crate) fields: Vec<(String, LogValue)>,
}

/// One `tracing` event of a child, with the spans it was in, root first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    /// 1 (ERROR) to 5 (TRACE).
    pub(crate) level: u8,
    pub(crate) name: String,
    pub(crate) target: String,
    pub(crate) module_path: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    pub(crate) fields: Vec<(String, LogValue)>,
    pub(crate) spans: Vec<LogSpan>,
}
