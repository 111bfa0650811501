//! W3C trace context across processes: a span's context leaves with a message (Kafka headers)
//! or arrives with a request (HTTP headers), so that an event's spans in the ingester are
//! children of the request that served it. Off unless this process exports spans
//! ([`set_exporting`]): then nothing is read, written or allocated per message.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use opentelemetry::{propagation::TextMapPropagator as _, trace::TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{BorrowedHeaders, Header, Headers as _, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Called once by a process that exports its spans (an OTLP endpoint is configured).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether this process exports spans: the only case where context is carried.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span `make` makes while this process exports spans, else none: a span on the hot path
/// costs nothing when nothing is exported, whatever the log level.
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if exporting() { make() } else { tracing::Span::none() }
}

/// A span context as the headers that carry it (`traceparent`, and `tracestate` when set).
pub type Carried = Arc<[(String, String)]>;

/// The current span's context, to send along; `None` when spans are not exported or the
/// current span is not sampled.
pub fn current() -> Option<Carried> {
    // Checked first: without it, finding the current span is the only cost.
    if !exporting() {
        return None;
    }
    of(&tracing::Span::current())
}

/// `span`'s context, to carry on; `None` as for [`current`].
pub fn of(span: &tracing::Span) -> Option<Carried> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    let span = context.span();
    let sampled = span.span_context();
    if !sampled.is_valid() || !sampled.is_sampled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    Some(carrier.into_iter().collect::<Vec<_>>().into())
}

/// Kafka headers carrying `carried`.
pub fn kafka_headers(carried: &Carried) -> OwnedHeaders {
    carried.iter().fold(OwnedHeaders::new_with_capacity(carried.len()), |headers, (key, value)| {
        headers.insert(Header { key, value: Some(value.as_str()) })
    })
}

/// Makes `span` (not yet entered) a child of the context carried by `headers`, where they
/// carry one; says whether they did.
pub fn adopt<'a>(span: &tracing::Span, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> bool {
    let mut carrier = HashMap::new();
    for (key, value) in headers {
        let carried = key.eq_ignore_ascii_case(TRACEPARENT) || key.eq_ignore_ascii_case(TRACESTATE);
        if carried && let Ok(value) = std::str::from_utf8(value) {
            carrier.insert(key.to_ascii_lowercase(), value.to_string());
        }
    }
    if !carrier.contains_key(TRACEPARENT) {
        return false;
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if !parent.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(parent).is_ok()
}

/// [`adopt`] over a consumed message's headers.
pub fn adopt_from_kafka(span: &tracing::Span, headers: &BorrowedHeaders) -> bool {
    adopt(span, headers.iter().filter_map(|h| Some((h.key, h.value?))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_or_missing_traceparent_adopts_nothing() {
        let span = tracing::Span::none();
        assert!(!adopt(&span, []));
        assert!(!adopt(&span, [("traceparent", &b"not-a-trace"[..])]));
        assert!(!adopt(&span, [("traceparent", &b"00-00000000000000000000000000000000-0000000000000000-01"[..])]));
        assert!(current().is_none(), "nothing is carried while spans are not exported");
    }
}
