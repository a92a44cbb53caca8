//! JSON lines with the ids of every enclosing span flattened into each line.

use std::fmt;
use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::redact::{is_sensitive_field, scrub_secrets};

/// The fields of a span, kept in its extensions as they are recorded.
#[derive(Debug, Default)]
struct SpanFields(Map<String, Value>);

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        let value = if is_sensitive_field(name) {
            Value::from("[redacted]")
        } else {
            match value {
                Value::String(text) => match scrub_secrets(&text) {
                    std::borrow::Cow::Owned(clean) => Value::String(clean),
                    std::borrow::Cow::Borrowed(_) => Value::String(text),
                },
                other => other,
            }
        };
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

/// A `tracing` layer writing one JSON object per event.
///
/// Each line has `timestamp`, `level`, `target`, `message`, the event's own fields, and
/// the fields of every enclosing span (the innermost wins), among them `request_id`,
/// `trace_id`, `tenant_id` and `user_id` when the request span has them; `span_id` is the
/// innermost span's id. Fields named like secrets ([`SENSITIVE_FIELDS`](super::SENSITIVE_FIELDS))
/// are written as `[redacted]`, and API keys and signing secrets inside any text (a
/// message, an error) are cut to their prefix ([`scrub_secrets`](super::scrub_secrets)).
pub struct JsonLayer<W> {
    make_writer: W,
}

impl<W> JsonLayer<W> {
    /// Writes to `make_writer` (for example `std::io::stdout`).
    pub fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        if let Some(scope) = ctx.event_scope(event) {
            let mut innermost = None;
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    for (k, v) in &fields.0 {
                        line.insert(k.clone(), v.clone());
                    }
                }
                innermost = Some((span.id(), span.name()));
            }
            if let Some((id, name)) = innermost {
                line.insert("span_id".into(), Value::from(format!("{:016x}", id.into_u64())));
                line.insert("span".into(), Value::from(name));
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let mut buf = match serde_json::to_vec(&line) {
            Ok(b) => b,
            Err(_) => return,
        };
        buf.push(b'\n');
        let mut w = self.make_writer.make_writer_for(meta);
        // A failing log sink must not take the request down with it.
        let _ = w.write_all(&buf);
    }
}
