//! The parent's side: re-emits a child's records into this process's
//! subscriber, through callsites made at run time, one per distinct
//! metadata (leaked once, and bounded), so that filters see each event's
//! real target, level and fields.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::Metadata;
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{DisplayValue, FieldSet, Value, ValueSet, display};
use tracing::level_filters::LevelFilter;
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Level};

use super::{CHILD_TARGET, u8_to_level};
use crate::wire::log::{LogRecord, LogValue};

/// The most callsites made for children's events; past it, events are
/// re-emitted through one fixed callsite per level, their target and
/// fields folded into the message.
const MAX_CALLSITES: usize = 4096;

const NEVER: u8 = 0;
const SOMETIMES: u8 = 1;
const ALWAYS: u8 = 2;
const UNKNOWN: u8 = 3;

/// A callsite made at run time. Its metadata names the callsite itself
/// (through the field set's identifier), so it is set once the callsite
/// has its address, before it is registered.
struct DynCallsite {
    meta: OnceLock<Metadata<'static>>,
    interest: AtomicU8,
}

impl Callsite for DynCallsite {
    fn set_interest(&self, interest: Interest) {
        let v = if interest.is_never() {
            NEVER
        } else if interest.is_always() {
            ALWAYS
        } else {
            SOMETIMES
        };
        self.interest.store(v, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.meta
            .get()
            .expect("the metadata is set before the callsite is registered")
    }
}

impl DynCallsite {
    fn meta(&'static self) -> &'static Metadata<'static> {
        self.meta.get().expect("set at creation")
    }

    /// What the macros check: the global maximum, the cached interest,
    /// then the dispatcher's `enabled` (where `EnvFilter` and per-layer
    /// filters decide).
    fn enabled(&'static self, dispatch: &Dispatch) -> bool {
        let meta = self.meta();
        if *meta.level() > LevelFilter::current() {
            return false;
        }
        match self.interest.load(Ordering::Relaxed) {
            NEVER => false,
            ALWAYS => true,
            _ => dispatch.enabled(meta),
        }
    }
}

/// What identifies a callsite, borrowed from a record.
#[derive(Clone, Copy)]
struct Key<'a> {
    span: bool,
    level: Level,
    name: &'a str,
    target: &'a str,
    module_path: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    fields: &'a [(String, LogValue)],
}

impl Key<'_> {
    fn hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.span.hash(&mut h);
        self.level.hash(&mut h);
        self.name.hash(&mut h);
        self.target.hash(&mut h);
        self.module_path.hash(&mut h);
        self.file.hash(&mut h);
        self.line.hash(&mut h);
        for (name, _) in self.fields {
            name.hash(&mut h);
        }
        h.finish()
    }

    fn matches(&self, m: &Metadata<'static>) -> bool {
        m.is_span() == self.span
            && *m.level() == self.level
            && m.name() == self.name
            && m.target() == self.target
            && m.module_path() == self.module_path
            && m.file() == self.file
            && m.line() == self.line
            && m.fields().len() == self.fields.len()
            && m.fields()
                .iter()
                .zip(self.fields)
                .all(|(f, (name, _))| f.name() == name)
    }
}

/// Every callsite made so far, by the hash of its key.
struct Callsites {
    by_hash: HashMap<u64, Vec<&'static DynCallsite>>,
    count: usize,
}

static CALLSITES: Mutex<Option<Callsites>> = Mutex::new(None);

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// The callsite for `key`, made and registered the first time; `None`
/// past the limit.
fn callsite(key: &Key<'_>) -> Option<&'static DynCallsite> {
    let hash = key.hash();
    let mut guard = CALLSITES.lock().unwrap_or_else(PoisonError::into_inner);
    let all = guard.get_or_insert_with(|| Callsites {
        by_hash: HashMap::new(),
        count: 0,
    });
    if let Some(found) = all
        .by_hash
        .get(&hash)
        .and_then(|v| v.iter().find(|cs| key.matches(cs.meta())))
    {
        return Some(found);
    }
    if all.count >= MAX_CALLSITES {
        return None;
    }
    let cs: &'static DynCallsite = Box::leak(Box::new(DynCallsite {
        meta: OnceLock::new(),
        interest: AtomicU8::new(UNKNOWN),
    }));
    let names: &'static [&'static str] = Box::leak(
        key.fields
            .iter()
            .map(|(n, _)| leak(n))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let meta = Metadata::new(
        leak(key.name),
        leak(key.target),
        key.level,
        key.file.map(leak),
        key.line,
        key.module_path.map(leak),
        FieldSet::new(names, Identifier(cs)),
        if key.span { Kind::SPAN } else { Kind::EVENT },
    );
    if cs.meta.set(meta).is_err() {
        unreachable!("a callsite made just now has no metadata");
    }
    all.by_hash.entry(hash).or_default().push(cs);
    all.count += 1;
    // Registration asks every dispatcher about it; done under the lock so
    // that no one uses the callsite before its interest is known.
    tracing::callsite::register(cs);
    Some(cs)
}

/// A value as `tracing` can take it (`Value` is sealed to its own types).
enum Holder<'a> {
    Str(&'a str),
    Fmt(DisplayValue<&'a str>),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl<'a> Holder<'a> {
    fn of(v: &'a LogValue) -> Self {
        match v {
            LogValue::Str(s) => Holder::Str(s),
            LogValue::Fmt(s) => Holder::Fmt(display(s.as_str())),
            LogValue::I64(v) => Holder::I64(*v),
            LogValue::U64(v) => Holder::U64(*v),
            LogValue::F64(v) => Holder::F64(*v),
            LogValue::Bool(v) => Holder::Bool(*v),
        }
    }

    fn as_value(&self) -> &dyn Value {
        match self {
            Holder::Str(s) => s,
            Holder::Fmt(d) => d,
            Holder::I64(v) => v,
            Holder::U64(v) => v,
            Holder::F64(v) => v,
            Holder::Bool(v) => v,
        }
    }
}

/// Calls `f` with the values of `fields` for `meta`, whose field names are
/// those of `fields`, in order (the callsite's key makes sure).
fn with_values<R>(
    meta: &'static Metadata<'static>,
    fields: &[(String, LogValue)],
    f: impl FnOnce(&ValueSet<'_>) -> R,
) -> R {
    let holders: Vec<Holder<'_>> = fields.iter().map(|(_, v)| Holder::of(v)).collect();
    let values: Vec<Option<&dyn Value>> = holders.iter().map(|h| Some(h.as_value())).collect();
    f(&meta.fields().value_set_all(&values))
}

/// Re-emits one record inside the child's label span and the spans it
/// had in the child. Returns false if it had to take the fallback.
fn replay_one(label: &[(String, LogValue)], rec: &LogRecord, dispatch: &Dispatch) -> bool {
    let Some(level) = u8_to_level(rec.level) else {
        return true;
    };
    let event_key = Key {
        span: false,
        level,
        name: &rec.name,
        target: &rec.target,
        module_path: rec.module_path.as_deref(),
        file: rec.file.as_deref(),
        line: rec.line,
        fields: &rec.fields,
    };
    let Some(event_cs) = callsite(&event_key) else {
        return false;
    };
    if !event_cs.enabled(dispatch) {
        return true;
    }
    // The label: at the event's level and target, so that a filter that
    // lets the event through lets its label through too.
    let mut entered = Vec::with_capacity(rec.spans.len() + 1);
    let label_key = Key {
        span: true,
        level,
        name: "child",
        target: &rec.target,
        module_path: None,
        file: None,
        line: None,
        fields: label,
    };
    let mut spans = vec![(label_key, label)];
    for s in &rec.spans {
        let Some(span_level) = u8_to_level(s.level) else {
            continue;
        };
        spans.push((
            Key {
                span: true,
                level: span_level,
                name: &s.name,
                target: &s.target,
                module_path: None,
                file: None,
                line: None,
                fields: &s.fields,
            },
            &s.fields,
        ));
    }
    for (key, fields) in spans {
        let Some(cs) = callsite(&key) else {
            return false;
        };
        if cs.enabled(dispatch) {
            let span = with_values(cs.meta(), fields, |values| {
                tracing::Span::new_with(cs.meta(), values, dispatch)
            });
            entered.push(span.entered());
        }
    }
    with_values(event_cs.meta(), &rec.fields, |values| {
        dispatch.event(&tracing::Event::new(event_cs.meta(), values));
    });
    while let Some(span) = entered.pop() {
        drop(span);
    }
    true
}

/// Re-emits a record with too many distinct callsites through a fixed one:
/// its target and fields become text.
fn fallback(process: &str, pid: u32, rec: &LogRecord) {
    let Some(level) = u8_to_level(rec.level) else {
        return;
    };
    let mut message = String::new();
    let mut rest = Vec::new();
    for (name, value) in &rec.fields {
        let text = match value {
            LogValue::Str(s) | LogValue::Fmt(s) => s.clone(),
            LogValue::I64(v) => v.to_string(),
            LogValue::U64(v) => v.to_string(),
            LogValue::F64(v) => v.to_string(),
            LogValue::Bool(v) => v.to_string(),
        };
        if name == "message" {
            message = text;
        } else {
            rest.push(format!("{name}={text}"));
        }
    }
    let fields = rest.join(" ");
    let _label = super::child_span(level, process, pid).entered();
    macro_rules! at {
        ($lvl:expr) => {
            tracing::event!(target: CHILD_TARGET, $lvl, child_target = %rec.target, fields = %fields, "{message}")
        };
    }
    match level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        Level::INFO => at!(Level::INFO),
        Level::DEBUG => at!(Level::DEBUG),
        Level::TRACE => at!(Level::TRACE),
    }
}

/// Re-emits a batch of a child's events, in order, into this thread's
/// current dispatcher; `dropped` events become one warning.
pub(crate) fn replay(process: &str, pid: u32, records: &[LogRecord], dropped: u64) {
    let label = [
        ("process".to_owned(), LogValue::Str(process.to_owned())),
        ("pid".to_owned(), LogValue::U64(u64::from(pid))),
    ];
    // A clone, not `get_default`'s borrow: inside that, this thread's
    // dispatcher is taken as busy and what it calls goes nowhere.
    let dispatch = tracing::dispatcher::get_default(Dispatch::clone);
    for rec in records {
        if !replay_one(&label, rec, &dispatch) {
            fallback(process, pid, rec);
        }
    }
    if dropped > 0 {
        let _label = super::child_span(Level::WARN, process, pid).entered();
        tracing::warn!(
            target: CHILD_TARGET,
            dropped,
            "the child dropped {dropped} log events: its buffer was full"
        );
    }
}
