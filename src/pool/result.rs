//! [`AsyncResult`]: the value of one task, as a future; and decoding what
//! a worker sent back.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;

use super::TaskError;
use super::job::JobRx;
use super::worker::Results;
use crate::target::decode_value;
use crate::wire::message::Outcome;

enum Inner {
    Pending(JobRx),
    Failed(Option<TaskError>),
}

/// The value of a task submitted with [`Pool::apply_async`](crate::Pool::apply_async), as a future.
///
/// Python's `AsyncResult`: await it for the value, or ask
/// [`ready`](Self::ready). Dropping it before the task reached a worker
/// cancels the task, which then never runs.
///
/// # Cancel safety
///
/// Awaiting it in a `select!` and dropping the poll loses nothing until
/// the `AsyncResult` itself is dropped.
#[must_use = "dropping an AsyncResult cancels its task if it has not started"]
pub struct AsyncResult<R> {
    inner: Inner,
    _value: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    pub(super) fn pending(rx: JobRx) -> Self {
        AsyncResult {
            inner: Inner::Pending(rx),
            _value: PhantomData,
        }
    }

    pub(super) fn failed(e: TaskError) -> Self {
        AsyncResult {
            inner: Inner::Failed(Some(e)),
            _value: PhantomData,
        }
    }

    /// Whether the task has ended, so that awaiting gives its result at once.
    pub fn ready(&self) -> bool {
        match &self.inner {
            Inner::Pending(rx) => rx.ready(),
            Inner::Failed(_) => true,
        }
    }

    fn poll_outcomes(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<Results, TaskError>> {
        match &mut self.inner {
            Inner::Pending(rx) => rx.poll(cx),
            Inner::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(TaskError::Cancelled))),
        }
    }
}

impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = std::result::Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.poll_outcomes(cx).map(|r| {
            r?.map_items(decode_item)
                .next()
                .unwrap_or_else(|| Err(TaskError::Decode("the worker sent no outcome".to_owned())))
        })
    }
}

pub(super) fn decode_item<R: DeserializeOwned>(
    item: std::result::Result<&[u8], Outcome>,
) -> std::result::Result<R, TaskError> {
    match item {
        Ok(bytes) => decode_value(bytes).map_err(TaskError::Decode),
        Err(outcome) => decode_outcome(outcome),
    }
}

fn decode_outcome<R: DeserializeOwned>(o: Outcome) -> std::result::Result<R, TaskError> {
    match o {
        Outcome::Returned(b) => decode_value(&b).map_err(TaskError::Decode),
        Outcome::Panicked(info) => Err(TaskError::Panicked(info)),
        Outcome::DecodeArgs(e) => Err(TaskError::Decode(format!(
            "in the worker, the arguments: {e}"
        ))),
        Outcome::EncodeResult(e) => Err(TaskError::EncodeResult(e)),
    }
}
