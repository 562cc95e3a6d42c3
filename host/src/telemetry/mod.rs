//! What the host tells its operators: log lines (human or JSON), traces, and metrics
//! (`metrics.rs`).
//!
//! Traces: the host's work is a tree of `tracing` spans — an HTTP request, a handler call, a
//! saga transition, each step's dispatch and its participant's call, each component call, each
//! commit. They are exported over OTLP (HTTP/protobuf) when an endpoint is configured; a message
//! carries the W3C `traceparent` of the span that sent it, so a saga whose steps run on several
//! hosts is one trace. Without an endpoint nothing is exported, and the spans below the request
//! are not even created: they are at `debug` level, and only the exporter's layer asks for them.

pub mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, with the span fields (request id, saga, …) in front.
    #[default]
    Human,
    /// One JSON object per line, with the current span's fields.
    Json,
}

/// The installed telemetry; exported spans are flushed when it is dropped.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("saga-host: the last spans could not be exported: {error}");
        }
    }
}

/// Whether spans are exported: without, no message carries a trace context.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The default log filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Installs logging (to stderr, `RUST_LOG` filtering it) and, with an OTLP endpoint, the trace
/// exporter; the process is named "saga-host" in the exported traces unless
/// `OTEL_SERVICE_NAME` names it (other `OTEL_RESOURCE_ATTRIBUTES` are read too). Call once, at
/// the start of the process.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        // Colours only on a terminal: a log piped to a file or a collector stays plain text.
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let (traces, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(endpoint)?;
            let tracer = provider.tracer("saga-host");
            // The exporter takes the host's own spans down to `debug` (the pipeline below the
            // request), and everything else from `info`.
            let wanted = EnvFilter::new("info,saga_host=debug,component=debug");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(wanted)
                .boxed();
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| format!("logging could not start: {e}"))?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { traces: provider })
}

fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url)
        .build()
        .map_err(|e| format!("the OTLP exporter to {endpoint} could not start: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "saga-host".into()),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The W3C `traceparent` of the current span, to carry in a message it sends; none when traces
/// are not exported.
pub fn traceparent() -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` part of the trace a request or message came with (its W3C `traceparent`).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| EXPORTING.load(Ordering::Relaxed)) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}
