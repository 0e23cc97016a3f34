//! The child's side: a `Layer` that copies each event (and the fields of
//! the spans around it) into a bounded queue without ever blocking, and a
//! thread that turns the queue into [`ChildMsg::Log`] batches on the
//! control channel.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
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
use crate::wire::log::{LogRecord, LogSpan, LogValue};
use crate::wire::message::ChildMsg;

/// How many events wait for the writer before new ones are dropped.
pub(crate) const QUEUE: usize = 4096;

/// The most records in one `Log` frame.
const BATCH: usize = 512;

type Fields = Vec<(&'static str, LogValue)>;

/// Collects fields with the primitive types `tracing` gives.
#[derive(Default)]
struct Collect(Fields);

impl Visit for Collect {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.push((f.name(), LogValue::Str(v.to_owned())));
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
        self.0.push((f.name(), LogValue::Fmt(v.to_string())));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        // The message comes here as `fmt::Arguments`, whose Debug is its text.
        self.0.push((f.name(), LogValue::Fmt(format!("{v:?}"))));
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
    Flush(std::sync::mpsc::Sender<()>),
}

/// Where the layer puts events, once this process is a child that
/// forwards.
struct Sink {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
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
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sink.tx.try_send(msg) {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn owned(fields: &Fields) -> Vec<(String, LogValue)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn record(p: Pending) -> LogRecord {
    let m = p.meta;
    LogRecord {
        level: level_to_u8(*m.level()),
        name: m.name().to_owned(),
        target: m.target().to_owned(),
        module_path: m.module_path().map(str::to_owned),
        file: m.file().map(str::to_owned),
        line: m.line(),
        fields: p
            .fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        spans: p
            .scope
            .iter()
            .map(|(sm, f)| LogSpan {
                name: sm.name().to_owned(),
                target: sm.target().to_owned(),
                level: level_to_u8(*sm.level()),
                fields: owned(f),
            })
            .collect(),
    }
}

/// Sends a batch; false once the channel is gone.
type SendFn = Box<dyn Fn(&ChildMsg) -> bool + Send>;

/// The writer's loop: takes what is queued, up to a batch, and sends it
/// with the count of events dropped since the last batch.
fn writer(rx: &Receiver<Msg>, dropped: &AtomicU64, send: &SendFn) {
    WRITER.with(|w| w.set(true));
    let mut alive = true;
    let mut records = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Event(p) => records.push(record(p)),
                Msg::Flush(done) => flushes.push(done),
            }
            next = if records.len() < BATCH && flushes.is_empty() {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if alive && (!records.is_empty() || lost > 0) {
            let msg = ChildMsg::Log {
                records: std::mem::take(&mut records),
                dropped: lost,
            };
            alive = send(&msg);
        }
        records.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The forwarder of this process, once installed.
static FORWARDER: Mutex<Option<SyncSender<Msg>>> = Mutex::new(None);

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
    let (tx, rx) = sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = dropped.clone();
    std::thread::Builder::new()
        .name("tokio-multiprocessing-logs".to_owned())
        .stack_size(256 * 1024)
        .spawn(move || writer(&rx, &counted, &send))
        .ok()?;
    *FORWARDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx.clone());
    if SINK.set(Sink { tx, dropped }).is_err() {
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
/// sent to the parent.
pub(crate) fn flush(timeout: Duration) {
    let Some(tx) = FORWARDER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    else {
        return;
    };
    let deadline = Instant::now() + timeout;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The queue may be full: wait for room, within the deadline.
    let mut msg = Msg::Flush(done_tx);
    loop {
        match tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Disconnected(_)) => return,
            Err(TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    return;
                }
                msg = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match done_rx.recv_timeout(left) {
        Ok(()) | Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
    }
}
