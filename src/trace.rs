//! The W3C trace context of a generation.
//!
//! A generation's trace id is derived from the object's UID and `metadata.generation`, so every
//! reconcile that works on the same generation (after a restart too) continues one trace, the
//! status can name it without changing on every reconcile, and the nodes' Deployments carry it
//! (`TRACEPARENT`) without rolling for any other reason than a new generation. The context
//! travels as the `traceparent` header of Kafka messages whether or not spans are exported:
//! propagation costs a header, and log lines of the operator, the intelligence service and the
//! nodes then share one id.
//!
//! When an OTLP endpoint is configured, the operator's spans (`generation` and its stages) are
//! children of this context, and the header carries the span the message was sent from.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The Kafka header (and HTTP header) of W3C Trace Context.
pub const TRACEPARENT: &str = "traceparent";

/// The trace of one generation of one NodeGeneration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationTrace {
    trace_id: [u8; 16],
    /// The generation's own (virtual) span: the parent of the operator's spans and of the nodes'.
    span_id: [u8; 8],
}

tokio::task_local! {
    static CURRENT: GenerationTrace;
}

impl GenerationTrace {
    /// The trace of `generation` of the object with `uid` (its name offline).
    pub fn of(uid: &str, generation: i64) -> Self {
        let digest = Sha256::digest(format!("omninode-trace/{uid}/{generation}").as_bytes());
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        trace_id.copy_from_slice(&digest[..16]);
        span_id.copy_from_slice(&digest[16..24]);
        // W3C: an all-zero id is invalid (a SHA-256 prefix of zeros is only theoretical).
        trace_id[15] |= (trace_id == [0; 16]) as u8;
        span_id[7] |= (span_id == [0; 8]) as u8;
        GenerationTrace { trace_id, span_id }
    }

    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// `00-<trace id>-<span id>-01`: sampled, so that a node's exporter keeps its spans.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id(), hex::encode(self.span_id))
    }

    /// The context to parent the operator's spans on.
    pub fn context(&self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    /// Run `f` with this trace as the current one (for [`current_traceparent`]).
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }
}

/// The trace a message sent now belongs to: the span it is sent from when spans are recorded,
/// otherwise the generation being worked on; None outside any generation.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    if span.is_valid() {
        return Some(format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        ));
    }
    CURRENT.try_with(GenerationTrace::traceparent).ok()
}

/// The current generation's trace id, for exemplars; None outside any generation.
pub fn current_trace_id() -> Option<String> {
    CURRENT.try_with(GenerationTrace::trace_id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_has_one_stable_valid_trace() {
        let a = GenerationTrace::of("2f0c-uid", 3);
        assert_eq!(a, GenerationTrace::of("2f0c-uid", 3));
        assert_ne!(a.trace_id(), GenerationTrace::of("2f0c-uid", 4).trace_id());
        let parent = a.traceparent();
        let parts: Vec<&str> = parent.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(
            parent
                .chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(a.context().span().span_context().is_valid());
    }

    #[tokio::test]
    async fn without_recorded_spans_the_header_is_the_generation() {
        assert_eq!(current_traceparent(), None);
        let trace = GenerationTrace::of("uid", 1);
        let inside = trace.scope(async { current_traceparent() }).await;
        assert_eq!(inside, Some(trace.traceparent()));
        assert_eq!(
            trace.scope(async { current_trace_id() }).await,
            Some(trace.trace_id())
        );
    }
}
