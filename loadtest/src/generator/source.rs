//! Where request bodies come from, and who sees the replies.

use std::{future::Future, sync::Arc};

use bytes::Bytes;

/// The requests of a run and what happens to their replies. A connection asks for the next
/// body at the request's send time, so a source that is slow to produce one makes the send
/// late (and counted late), never the schedule slip.
pub trait Source: Send + Sync + 'static {
    /// Carried from a request to its reply.
    type Tag: Send + 'static;

    /// The body of the `i`-th request of the schedule.
    fn next(&self, i: usize) -> impl Future<Output = Option<(Bytes, Self::Tag)>> + Send;

    /// A reply arrived (`measured` is false during the warm-up). Runs on the connection's task:
    /// keep it short.
    fn reply(&self, tag: Self::Tag, status: u16, body: &[u8], measured: bool);
}

/// The same bodies over and over, in order; replies are ignored.
#[derive(Debug, Clone)]
pub struct Cycle(pub Arc<Vec<Bytes>>);

impl Cycle {
    pub fn new(bodies: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Self(Arc::new(bodies.into_iter().map(Bytes::from).collect()))
    }
}

impl Source for Cycle {
    type Tag = ();

    async fn next(&self, i: usize) -> Option<(Bytes, ())> {
        (!self.0.is_empty()).then(|| (self.0[i % self.0.len()].clone(), ()))
    }

    fn reply(&self, _: (), _: u16, _: &[u8], _: bool) {}
}
