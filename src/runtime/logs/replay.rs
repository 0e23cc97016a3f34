//! The parent's side: re-emits a child's records into this process's
//! subscriber, through callsites made at run time, one per distinct
//! metadata (leaked once, and bounded), so that filters see each event's
//! real target, level and fields.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::Metadata;
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{DisplayValue, FieldSet, Value, display};
use tracing::level_filters::LevelFilter;
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Level};

use super::{CHILD_TARGET, u8_to_level};
use crate::wire::log::{LogBatch, LogCallsite, LogEntry, LogValue};

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

/// Every callsite made so far, by what identifies it, so that every child
/// (and every run of one) that logs from one place shares one callsite.
static CALLSITES: Mutex<Option<HashMap<LogCallsite, &'static DynCallsite>>> = Mutex::new(None);

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// The callsite `def` describes (its `id` aside), made and registered the
/// first time; `None` past the limit, or for a level that is none.
fn callsite(def: &LogCallsite) -> Option<&'static DynCallsite> {
    let level = u8_to_level(def.level)?;
    let key = LogCallsite {
        id: 0,
        ..def.clone()
    };
    let mut guard = CALLSITES.lock().unwrap_or_else(PoisonError::into_inner);
    let all = guard.get_or_insert_with(HashMap::new);
    if let Some(found) = all.get(&key) {
        return Some(found);
    }
    if all.len() >= MAX_CALLSITES {
        return None;
    }
    let cs: &'static DynCallsite = Box::leak(Box::new(DynCallsite {
        meta: OnceLock::new(),
        interest: AtomicU8::new(UNKNOWN),
    }));
    let names: &'static [&'static str] = Box::leak(
        def.fields
            .iter()
            .map(|n| leak(n))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let meta = Metadata::new(
        leak(&def.name),
        leak(&def.target),
        level,
        def.file.as_deref().map(leak),
        def.line,
        def.module_path.as_deref().map(leak),
        FieldSet::new(names, Identifier(cs)),
        if def.span { Kind::SPAN } else { Kind::EVENT },
    );
    if cs.meta.set(meta).is_err() {
        unreachable!("a callsite made just now has no metadata");
    }
    all.insert(key, cs);
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
    fn of(v: &'a LogValue<'_>) -> Self {
        match v {
            LogValue::Str(s) => Holder::Str(s),
            LogValue::Fmt(s) => Holder::Fmt(display(s.as_ref())),
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

/// Calls `f` with `values` (each with the position of its field) as the
/// values of `meta`; a position past its fields is left out.
fn with_values<R>(
    meta: &'static Metadata<'static>,
    values: &[(u16, LogValue<'_>)],
    f: impl FnOnce(&tracing::field::ValueSet<'_>) -> R,
) -> R {
    let holders: Vec<(usize, Holder<'_>)> = values
        .iter()
        .map(|(at, v)| (usize::from(*at), Holder::of(v)))
        .collect();
    let mut slots: Vec<Option<&dyn Value>> = vec![None; meta.fields().len()];
    for (at, h) in &holders {
        if let Some(slot) = slots.get_mut(*at) {
            *slot = Some(h.as_value());
        }
    }
    f(&meta.fields().value_set_all(&slots))
}

/// The most callsites one child may name.
const MAX_PER_CHILD: usize = 65_536;

/// What the parent knows of one callsite of a child.
struct Known {
    def: LogCallsite,
    /// `None` past the limit of callsites: its events take the fallback.
    cs: Option<&'static DynCallsite>,
    /// The label its events go in, once one of them was re-emitted: the
    /// child's label span for its target and level.
    label: Option<tracing::Span>,
}

/// The parent's side of one child's logs: its callsites by number, and
/// its label spans (one per target and level its events have), open
/// while the child is.
pub(crate) struct Replayer {
    process: String,
    pid: u32,
    known: HashMap<u32, Known>,
    labels: HashMap<(String, u8), tracing::Span>,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("process", &self.process)
            .field("pid", &self.pid)
            .field("callsites", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl Replayer {
    /// For the child `process`, pid `pid`.
    pub(crate) fn new(process: &str, pid: u32) -> Replayer {
        Replayer {
            process: process.to_owned(),
            pid,
            known: HashMap::new(),
            labels: HashMap::new(),
        }
    }

    /// Re-emits an encoded [`LogBatch`] into this thread's dispatcher, in
    /// order; its dropped events become one warning. A batch that does
    /// not decode is a warning too, and nothing else.
    pub(crate) fn replay(&mut self, encoded: &[u8]) {
        let batch: LogBatch<'_> = match rmp_serde::from_slice(encoded) {
            Ok(batch) => batch,
            Err(e) => {
                let _label = super::child_span(Level::WARN, &self.process, self.pid).entered();
                tracing::warn!(target: CHILD_TARGET, error = %e, "a batch of the child's log events did not decode");
                return;
            }
        };
        for def in batch.callsites {
            if self.known.len() >= MAX_PER_CHILD && !self.known.contains_key(&def.id) {
                continue;
            }
            let cs = callsite(&def);
            self.known.insert(
                def.id,
                Known {
                    def,
                    cs,
                    label: None,
                },
            );
        }
        // A clone, not `get_default`'s borrow: inside that, this thread's
        // dispatcher is taken as busy and what it calls goes nowhere.
        let dispatch = tracing::dispatcher::get_default(Dispatch::clone);
        for record in &batch.records {
            self.one(&dispatch, &record.event, &record.spans);
        }
        if batch.dropped > 0 {
            let dropped = batch.dropped;
            let _label = super::child_span(Level::WARN, &self.process, self.pid).entered();
            tracing::warn!(
                target: CHILD_TARGET,
                dropped,
                "the child dropped {dropped} log events: its buffer was full"
            );
        }
    }

    /// Re-emits one event inside the child's label span and the spans it
    /// had in the child.
    fn one(&mut self, dispatch: &Dispatch, event: &LogEntry<'_>, spans: &[LogEntry<'_>]) {
        let Some(known) = self.known.get(&event.callsite) else {
            return;
        };
        let Some(cs) = known.cs else {
            fallback(&self.process, self.pid, &known.def, &event.values);
            return;
        };
        if known.def.span || !cs.enabled(dispatch) {
            return;
        }
        let meta = cs.meta();
        // The label: at the event's level and target, so that a filter that
        // lets the event through lets its label through too. Found once per
        // callsite, then kept with it.
        if known.label.is_none() {
            let key = (known.def.target.clone(), known.def.level);
            let label = match self.labels.get(&key) {
                Some(label) => label.clone(),
                None => self.label(&known.def, dispatch),
            };
            self.labels.entry(key).or_insert_with(|| label.clone());
            if let Some(known) = self.known.get_mut(&event.callsite) {
                known.label = Some(label);
            }
        }
        let _label = self
            .known
            .get(&event.callsite)
            .and_then(|k| k.label.as_ref())
            .map(tracing::Span::enter);
        let mut entered = Vec::with_capacity(spans.len());
        for s in spans {
            let Some(span_cs) = self.known.get(&s.callsite).and_then(|k| k.cs) else {
                continue;
            };
            if span_cs.meta().is_span() && span_cs.enabled(dispatch) {
                let span = with_values(span_cs.meta(), &s.values, |values| {
                    tracing::Span::new_with(span_cs.meta(), values, dispatch)
                });
                entered.push(span.entered());
            }
        }
        with_values(meta, &event.values, |values| {
            dispatch.event(&tracing::Event::new(meta, values));
        });
        while let Some(span) = entered.pop() {
            drop(span);
        }
    }

    /// A new label span for events of `def`'s target and level.
    fn label(&self, def: &LogCallsite, dispatch: &Dispatch) -> tracing::Span {
        let label_def = LogCallsite {
            id: 0,
            span: true,
            level: def.level,
            name: "child".to_owned(),
            target: def.target.clone(),
            module_path: None,
            file: None,
            line: None,
            fields: vec!["process".to_owned(), "pid".to_owned()],
        };
        let Some(cs) = callsite(&label_def) else {
            return super::child_span(
                u8_to_level(def.level).unwrap_or(Level::INFO),
                &self.process,
                self.pid,
            );
        };
        if !cs.enabled(dispatch) {
            return tracing::Span::none();
        }
        let values = [
            (0, LogValue::Str(self.process.as_str().into())),
            (1, LogValue::U64(u64::from(self.pid))),
        ];
        with_values(cs.meta(), &values, |values| {
            tracing::Span::new_with(cs.meta(), values, dispatch)
        })
    }
}

/// Re-emits an event past the limit of callsites through a fixed one: its
/// target and fields become text.
fn fallback(process: &str, pid: u32, def: &LogCallsite, values: &[(u16, LogValue<'_>)]) {
    let Some(level) = u8_to_level(def.level) else {
        return;
    };
    if def.span {
        return;
    }
    let mut message = String::new();
    let mut rest = Vec::new();
    for (at, value) in values {
        let name = def.fields.get(usize::from(*at)).map_or("?", String::as_str);
        let text = match value {
            LogValue::Str(s) | LogValue::Fmt(s) => s.to_string(),
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
            tracing::event!(target: CHILD_TARGET, $lvl, child_target = %def.target, fields = %fields, "{message}")
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::wire::log::LogRecord;

    fn def() -> LogCallsite {
        LogCallsite {
            id: 0,
            span: false,
            level: 3,
            name: "event src/x.rs:10".into(),
            target: "bench_log".into(),
            module_path: Some("bench".into()),
            file: Some("src/x.rs".into()),
            line: Some(10),
            fields: vec!["message".into(), "i".into(), "kind".into()],
        }
    }

    fn encoded(n: u64) -> Vec<u8> {
        let records = (0..n)
            .map(|i| LogRecord {
                event: LogEntry {
                    callsite: 0,
                    values: vec![
                        (0, LogValue::Fmt(Cow::Borrowed("event"))),
                        (1, LogValue::U64(i)),
                        (2, LogValue::Str(Cow::Borrowed("bench"))),
                    ],
                },
                spans: vec![],
            })
            .collect();
        rmp_serde::to_vec(&LogBatch {
            callsites: vec![def()],
            records,
            dropped: 0,
        })
        .unwrap()
    }

    proptest::proptest! {
        /// Whatever a child sends as a batch, the parent re-emits it or
        /// warns, and never panics.
        #[test]
        fn any_bytes_are_events_or_a_warning(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let sub = tracing_subscriber::registry()
                .with(tracing_subscriber::filter::LevelFilter::TRACE);
            tracing::subscriber::with_default(sub, || {
                let mut r = Replayer::new("p", 1);
                r.replay(&bytes);
                // And after a sound batch, the same bytes again.
                r.replay(&encoded(3));
                r.replay(&bytes);
            });
        }
    }

    #[test]
    #[ignore = "a measurement, run by hand with --release"]
    fn replay_cost() {
        let bytes = encoded(512);
        let t0 = std::time::Instant::now();
        for _ in 0..200 {
            let back: LogBatch<'_> = rmp_serde::from_slice(&bytes).unwrap();
            std::hint::black_box(back);
        }
        eprintln!("decode: {:?}/event", t0.elapsed() / (200 * 512));
        let sub =
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO);
        tracing::subscriber::with_default(sub, || {
            let mut r = Replayer::new("p", 1);
            let t0 = std::time::Instant::now();
            for _ in 0..200 {
                r.replay(&bytes);
            }
            eprintln!(
                "replay into a bare registry: {:?}/event",
                t0.elapsed() / (200 * 512)
            );
        });
    }
}
