//! A subscriber that records every event: its level, target, message and
//! fields, as text.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One recorded event.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) level: Level,
    pub(crate) target: String,
    pub(crate) message: String,
    pub(crate) fields: BTreeMap<String, String>,
}

impl Record {
    /// Field `name`, as text (a `Display` or `Debug` value as printed).
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

struct Recorder;

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_owned(), text);
        }
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        RECORDS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Record {
                level: *meta.level(),
                target: meta.target().to_owned(),
                message: fields.message,
                fields: fields.fields,
            });
    }
}

/// Installs the recorder as the global subscriber, up to `DEBUG`.
pub(crate) fn install() {
    let subscriber = tracing_subscriber::registry()
        .with(LevelFilter::DEBUG)
        .with(Recorder);
    tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");
}

/// Every event recorded so far.
pub(crate) fn all() -> Vec<Record> {
    RECORDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Waits (up to `limit`) for an event that passes `pred`, and returns the
/// first; `Err` with every recorded event if none came.
pub(crate) async fn wait_for(
    limit: Duration,
    what: &str,
    pred: impl Fn(&Record) -> bool,
) -> Result<Record, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(r) = all().into_iter().find(|r| pred(r)) {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no event {what} within {limit:?}; recorded:\n{:#?}",
                all()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
