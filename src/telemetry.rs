//! Logs to stderr, and spans over OTLP when an endpoint is configured (the OpenTelemetry
//! variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` with
//! `/v1/traces` added; `OTEL_SERVICE_NAME`, else `adrank-<subcommand>`; `OTEL_TRACES_SAMPLER`).
//! Without one, no span is exported, no context travels with a message, and no exporter runs.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// The crates whose spans are exported, at info and above.
const TRACED: [&str; 5] = ["adrank", "adrank_serving", "adrank_featurestore", "adrank_registry", "adrank_trainer"];

/// Exports what is left when dropped (the end of `main`).
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: spans not exported at exit: {e}");
        }
    }
}

/// Where spans go, from the environment; `None`: nowhere.
fn endpoint() -> Option<String> {
    let set = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| format!("{}/v1/traces", base.trim_end_matches('/'))))
}

/// Logs filtered by `ADRANK_LOG` (tracing's filter syntax, warnings by default); with an OTLP
/// endpoint, also adrank's spans, exported in batches from a thread of their own.
pub(crate) fn init(subcommand: &str) -> Telemetry {
    let filter = EnvFilter::try_from_env("ADRANK_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // Colours only on a terminal: log files and test captures stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).with_filter(filter);
    let (provider, problem) = match endpoint().map(|endpoint| provider(&endpoint, subcommand)) {
        None => (None, None),
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(e)) => (None, Some(e)),
    };
    let spans = provider.as_ref().map(|provider| {
        let targets = TRACED.iter().fold(Targets::new(), |t, name| t.with_target(*name, tracing::Level::INFO));
        tracing_opentelemetry::layer().with_tracer(provider.tracer("adrank")).with_filter(targets)
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    adrank_featurestore::trace_context::set_exporting(provider.is_some());
    if let Some(e) = problem {
        tracing::warn!(error = %e, "spans are not exported");
    }
    Telemetry { provider }
}

fn provider(endpoint: &str, subcommand: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("the OTLP exporter for {endpoint}: {e}"))?;
    // The SDK's defaults (every 5 s, OTEL_BSP_* override them) would hold a span for seconds.
    let batches = BatchConfigBuilder::default().with_scheduled_delay(Duration::from_millis(500)).build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| format!("adrank-{subcommand}"));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
