//! A subscriber layer that records every event with the spans around it,
//! so that cases can check what reached the parent. Events whose target
//! is `slow` take a millisecond each, as a slow subscriber would.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// One recorded event.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) level: Level,
    pub(crate) target: String,
    pub(crate) fields: BTreeMap<String, String>,
    /// The spans around it, root first: name and fields.
    pub(crate) spans: Vec<(String, BTreeMap<String, String>)>,
}

impl Seen {
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The `pid` of its `child` label span, if it has one.
    pub(crate) fn child_pid(&self) -> Option<u32> {
        self.spans
            .iter()
            .find(|(name, _)| name == "child")
            .and_then(|(_, f)| f.get("pid"))
            .and_then(|p| p.parse().ok())
    }

    /// The `process` of its `child` label span, if it has one.
    pub(crate) fn child_process(&self) -> Option<&str> {
        self.spans
            .iter()
            .find(|(name, _)| name == "child")
            .and_then(|(_, f)| f.get("process"))
            .map(String::as_str)
    }
}

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// What was recorded so far that passes `want`.
pub(crate) fn seen(want: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    SEEN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|s| want(s))
        .cloned()
        .collect()
}

/// What was recorded with a `child` label of process `pid`.
pub(crate) fn from_child(pid: u32) -> Vec<Seen> {
    seen(|s| s.child_pid() == Some(pid))
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn Debug) {
        self.0.insert(f.name().to_owned(), format!("{v:?}"));
    }
}

/// The recording layer.
pub(crate) struct Recorder;

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|s| {
                        let fields = s
                            .extensions()
                            .get::<BTreeMap<String, String>>()
                            .cloned()
                            .unwrap_or_default();
                        (s.name().to_owned(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if event.metadata().target() == "slow" {
            std::thread::sleep(Duration::from_millis(1));
        }
        SEEN.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Seen {
                level: *event.metadata().level(),
                target: event.metadata().target().to_owned(),
                fields: f.0,
                spans,
            });
    }
}

/// Installs the recorder as the global subscriber, at `INFO` and above.
pub(crate) fn install() {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(Recorder)
        .init();
}
