//! The child's side: a `Layer` that copies each event (and the fields of
//! the spans around it) into a bounded queue without ever blocking, and a
//! thread that turns the queue into [`ChildMsg::Log`] batches on the
//! control channel.

use std::cell::Cell;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use super::{level_to_u8, u8_to_level};
use std::borrow::Cow;
use std::collections::HashMap;

use crate::wire::log::{LogBatch, LogCallsite, LogEntry, LogRecord, LogValue};
use crate::wire::message::ChildMsg;

/// How many events wait for the writer before new ones are dropped. The
/// queue grows with what waits, so a child that logs little keeps little.
pub(crate) const QUEUE: usize = 16_384;

/// The most records in one `Log` frame.
const BATCH: usize = 512;

type Fields = Vec<(&'static str, LogValue<'static>)>;

/// Collects fields with the primitive types `tracing` gives.
#[derive(Default)]
struct Collect(Fields);

impl Visit for Collect {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0
            .push((f.name(), LogValue::Str(Cow::Owned(v.to_owned()))));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.push((f.name(), LogValue::I64(v)));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.push((f.name(), LogValue::U64(v)));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.push((f.name(), LogValue::F64(v)));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.push((f.name(), LogValue::Bool(v)));
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0
            .push((f.name(), LogValue::Fmt(Cow::Owned(v.to_string()))));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        // The message comes here as `fmt::Arguments`, whose Debug is its text.
        self.0
            .push((f.name(), LogValue::Fmt(Cow::Owned(format!("{v:?}")))));
    }
}

/// A span's fields so far, kept in its extensions; shared by pointer with
/// the events inside it.
struct SpanFields(Arc<Fields>);

/// An event as the logging thread hands it over: `'static` metadata and
/// owned values. Strings are copied on the writer's thread.
struct Pending {
    meta: &'static Metadata<'static>,
    fields: Fields,
    scope: Vec<(&'static Metadata<'static>, Arc<Fields>)>,
}

enum Msg {
    Event(Pending),
    /// Send everything before this, then say so.
    Flush(Sender<()>),
}

/// Where the layer puts events, once this process is a child that
/// forwards. The queue and its writer are made at the first event: a child
/// that never logs pays for neither.
struct Sink {
    send: Mutex<Option<SendFn>>,
    queue: OnceLock<Sender<Msg>>,
    /// Events in the queue, which the writer counts down.
    waiting: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// The queue, made with its writer the first time.
    fn queue(&self) -> &Sender<Msg> {
        self.queue.get_or_init(|| {
            let (tx, rx) = channel();
            let send = self
                .send
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let (dropped, waiting) = (self.dropped.clone(), self.waiting.clone());
            let spawned = send.map(|send| {
                std::thread::Builder::new()
                    .name("tokio-multiprocessing-logs".to_owned())
                    .stack_size(256 * 1024)
                    .spawn(move || writer(&rx, &waiting, &dropped, &send))
            });
            if let Some(Err(e)) = spawned {
                // The queue has no reader: every event is counted as dropped.
                eprintln!("tokio-multiprocessing: could not start the log forwarder: {e}");
            }
            tx
        })
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// Set on the writer's thread: what it logs itself is not forwarded
    /// (it could wait on itself).
    static WRITER: Cell<bool> = const { Cell::new(false) };
}

/// The layer that forwards. Inert until [`install`] binds its sink.
#[derive(Debug, Default, Clone, Copy)]
struct ForwardLayer;

impl<S> Layer<S> for ForwardLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        attrs.record(&mut c);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(Arc::new(c.0)));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut c = Collect::default();
        values.record(&mut c);
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(fields)) = ext.get_mut::<SpanFields>() {
            let fields = Arc::make_mut(fields);
            for (k, v) in c.0 {
                match fields.iter_mut().find(|(n, _)| *n == k) {
                    Some(slot) => slot.1 = v,
                    None => fields.push((k, v)),
                }
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(sink) = SINK.get() else { return };
        if WRITER.with(Cell::get) {
            return;
        }
        let mut c = Collect::default();
        event.record(&mut c);
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let fields = span
                            .extensions()
                            .get::<SpanFields>()
                            .map(|f| f.0.clone())
                            .unwrap_or_default();
                        (span.metadata(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let msg = Msg::Event(Pending {
            meta: event.metadata(),
            fields: c.0,
            scope,
        });
        // Never block: a full queue is a counted drop.
        if sink.waiting.fetch_add(1, Ordering::Relaxed) >= QUEUE || sink.queue().send(msg).is_err()
        {
            sink.waiting.fetch_sub(1, Ordering::Relaxed);
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer's numbering of callsites: each is named to the parent once.
#[derive(Default)]
struct Numbering {
    ids: HashMap<usize, u32>,
}

impl Numbering {
    /// The number of `meta`'s callsite, naming it in `named` the first time.
    fn id(&mut self, meta: &'static Metadata<'static>, named: &mut Vec<LogCallsite>) -> u32 {
        let key = std::ptr::from_ref(meta) as usize;
        let next = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        *self.ids.entry(key).or_insert_with(|| {
            named.push(LogCallsite {
                id: next,
                span: meta.is_span(),
                level: level_to_u8(*meta.level()),
                name: meta.name().to_owned(),
                target: meta.target().to_owned(),
                module_path: meta.module_path().map(str::to_owned),
                file: meta.file().map(str::to_owned),
                line: meta.line(),
                fields: meta.fields().iter().map(|f| f.name().to_owned()).collect(),
            });
            next
        })
    }
}

/// A value, borrowed for encoding.
fn borrowed<'a>(v: &'a LogValue<'static>) -> LogValue<'a> {
    match v {
        LogValue::Str(s) => LogValue::Str(Cow::Borrowed(s)),
        LogValue::Fmt(s) => LogValue::Fmt(Cow::Borrowed(s)),
        LogValue::I64(v) => LogValue::I64(*v),
        LogValue::U64(v) => LogValue::U64(*v),
        LogValue::F64(v) => LogValue::F64(*v),
        LogValue::Bool(v) => LogValue::Bool(*v),
    }
}

/// An event or span's values, with the positions of their fields.
fn entry<'a>(
    numbering: &mut Numbering,
    named: &mut Vec<LogCallsite>,
    meta: &'static Metadata<'static>,
    fields: &'a Fields,
) -> LogEntry<'a> {
    let values = fields
        .iter()
        .filter_map(|(name, value)| {
            let at = meta.fields().iter().position(|f| f.name() == *name)?;
            Some((u16::try_from(at).ok()?, borrowed(value)))
        })
        .collect();
    LogEntry {
        callsite: numbering.id(meta, named),
        values,
    }
}

/// The batch of `pending`, borrowing its values.
fn batch<'a>(numbering: &mut Numbering, pending: &'a [Pending], dropped: u64) -> LogBatch<'a> {
    let mut callsites = Vec::new();
    let records = pending
        .iter()
        .map(|p| LogRecord {
            spans: p
                .scope
                .iter()
                .map(|(meta, fields)| entry(numbering, &mut callsites, meta, fields))
                .collect(),
            event: entry(numbering, &mut callsites, p.meta, &p.fields),
        })
        .collect();
    LogBatch {
        callsites,
        records,
        dropped,
    }
}

/// Sends a batch; false once the channel is gone.
type SendFn = Box<dyn Fn(&ChildMsg) -> bool + Send>;

/// The writer's loop: takes what is queued, up to a batch, and sends it
/// with the count of events dropped since the last batch.
fn writer(rx: &Receiver<Msg>, waiting: &AtomicUsize, dropped: &AtomicU64, send: &SendFn) {
    WRITER.with(|w| w.set(true));
    let mut alive = true;
    let mut numbering = Numbering::default();
    let mut pending = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Event(p) => {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    pending.push(p);
                }
                Msg::Flush(done) => flushes.push(done),
            }
            next = if pending.len() < BATCH && flushes.is_empty() {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if alive && (!pending.is_empty() || lost > 0) {
            match rmp_serde::to_vec(&batch(&mut numbering, &pending, lost)) {
                Ok(bytes) => alive = send(&ChildMsg::Log(bytes.into())),
                Err(e) => eprintln!("tokio-multiprocessing: a log batch did not encode: {e}"),
            }
        }
        pending.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

thread_local! {
    /// The guard of the child's main thread's default, when the program
    /// had a global subscriber of its own.
    static MAIN_DEFAULT: std::cell::RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// How the forwarder came to receive this child's events.
#[derive(Debug, Clone)]
pub(crate) enum Installed {
    /// It is the global subscriber: every thread forwards.
    Global,
    /// The program set a global subscriber before `init()`; the forwarder
    /// is the default of the threads this returns, to be set on each
    /// thread of the child's runtime too.
    Scoped(Dispatch),
}

impl Installed {
    /// Makes the forwarder the default of the calling thread, for its
    /// whole life (for a runtime's `on_thread_start`).
    pub(crate) fn enter_thread(&self) {
        if let Installed::Scoped(dispatch) = self {
            std::mem::forget(tracing::dispatcher::set_default(dispatch));
        }
    }
}

/// Makes this child forward its events at `level` (1 = ERROR ... 5 =
/// TRACE) and more severe, through `send`; `None` when `level` is 0.
pub(crate) fn install(level: u8, send: SendFn) -> Option<Installed> {
    let max: LevelFilter = u8_to_level(level)?.into();
    let sink = Sink {
        send: Mutex::new(Some(send)),
        queue: OnceLock::new(),
        waiting: Arc::new(AtomicUsize::new(0)),
        dropped: Arc::new(AtomicU64::new(0)),
    };
    if SINK.set(sink).is_err() {
        return None;
    }
    let subscriber = tracing_subscriber::registry().with(max).with(ForwardLayer);
    let dispatch = Dispatch::new(subscriber);
    if tracing::dispatcher::set_global_default(dispatch.clone()).is_ok() {
        return Some(Installed::Global);
    }
    // The program's own subscriber is global (set before `init()`): ours is
    // this thread's default for as long as the child runs.
    let guard = tracing::dispatcher::set_default(&dispatch);
    MAIN_DEFAULT.with(|g| *g.borrow_mut() = Some(guard));
    Some(Installed::Scoped(dispatch))
}

/// Waits, at most `timeout`, until every event queued so far has been
/// sent to the parent. Returns how many were still waiting when it gave
/// up (0 when all went).
pub(crate) fn flush(timeout: Duration) -> usize {
    let Some(tx) = SINK.get().and_then(|sink| sink.queue.get()).cloned() else {
        // Nothing was ever logged: no writer, nothing to send.
        return 0;
    };
    let deadline = Instant::now() + timeout;
    let (done_tx, done_rx) = channel();
    let waiting = || {
        SINK.get()
            .map_or(0, |sink| sink.waiting.load(Ordering::Relaxed))
    };
    if tx.send(Msg::Flush(done_tx)).is_err() {
        return waiting();
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match done_rx.recv_timeout(left) {
        Ok(()) => 0,
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => waiting(),
    }
}
