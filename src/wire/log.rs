//! Log records on the wire: a child's `tracing` events and the spans
//! around them, as its forwarder sends them and the parent re-emits them.
//! No `tracing` types: levels are small integers.
//!
//! A batch names each callsite (its level, target, name, place and field
//! names) the first time the child sends one of its events, under a
//! number; after that an event is that number and its values. Values
//! borrow from the frame when they are decoded.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// A field's value, keeping the primitive type `tracing` recorded.
///
/// On the wire each is MessagePack's own type (a string, an integer, a
/// float, a boolean), and a formatted value is a string in a `bin`: no tag,
/// so that a batch decodes at the speed of its bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LogValue<'a> {
    /// `record_str`.
    Str(Cow<'a, str>),
    /// `record_debug` and `record_error`: formatted in the child.
    Fmt(Cow<'a, str>),
    /// `record_i64`.
    I64(i64),
    /// `record_u64`.
    U64(u64),
    /// `record_f64`.
    F64(f64),
    /// `record_bool`.
    Bool(bool),
}

impl Serialize for LogValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LogValue::Str(v) => s.serialize_str(v),
            LogValue::Fmt(v) => s.serialize_bytes(v.as_bytes()),
            LogValue::I64(v) => s.serialize_i64(*v),
            LogValue::U64(v) => s.serialize_u64(*v),
            LogValue::F64(v) => s.serialize_f64(*v),
            LogValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LogValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LogValue<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a log value: a string, text in bytes, a number or a boolean")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LogValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LogValue::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                std::str::from_utf8(v)
                    .map(|s| LogValue::Fmt(Cow::Borrowed(s)))
                    .map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                std::str::from_utf8(v)
                    .map(|s| LogValue::Fmt(Cow::Owned(s.to_owned())))
                    .map_err(E::custom)
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LogValue::I64(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LogValue::U64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LogValue::F64(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LogValue::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A callsite of the child, named once per batch stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct LogCallsite {
    /// The number later entries use for it.
    pub(crate) id: u32,
    /// A span's callsite, or an event's.
    pub(crate) span: bool,
    /// 1 (ERROR) to 5 (TRACE).
    pub(crate) level: u8,
    pub(crate) name: String,
    pub(crate) target: String,
    pub(crate) module_path: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    pub(crate) fields: Vec<String>,
}

/// An event or a span: its callsite's number and the values it has, each
/// with the position of its field among the callsite's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogEntry<'a> {
    pub(crate) callsite: u32,
    #[serde(borrow)]
    pub(crate) values: Vec<(u16, LogValue<'a>)>,
}

/// One event of a child, with the spans it was in, root first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogRecord<'a> {
    #[serde(borrow)]
    pub(crate) event: LogEntry<'a>,
    #[serde(borrow)]
    pub(crate) spans: Vec<LogEntry<'a>>,
}

/// What one `Log` message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogBatch<'a> {
    /// Callsites named for the first time, before the records that use them.
    pub(crate) callsites: Vec<LogCallsite>,
    #[serde(borrow)]
    pub(crate) records: Vec<LogRecord<'a>>,
    /// Events the child dropped (its buffer was full) since the last batch.
    pub(crate) dropped: u64,
}
