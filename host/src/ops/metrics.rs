//! `/metrics`: the per-plugin counters and latencies in Prometheus text
//! format, read from the plugins' own counters at scrape time.

use std::fmt::Write as _;

use crate::pipeline::Pipeline;

/// A counter's name, help text, and how to read it from a snapshot.
type Counter = (
    &'static str,
    &'static str,
    fn(&crate::runtime::StatsSnapshot) -> u64,
);

/// Prometheus text exposition of the per-plugin counters.
pub fn render(pipeline: &Pipeline) -> (&'static str, String) {
    let plugins = pipeline.table().plugins();
    let snapshots: Vec<_> = plugins
        .iter()
        .map(|p| (p.name(), p.stats.snapshot()))
        .collect();
    let mut out = String::new();
    let counters: [Counter; 7] = [
        (
            "ferry_requests_total",
            "Requests that reached a plugin.",
            |s| s.requests,
        ),
        (
            "ferry_errors_total",
            "Requests the plugin answered with an error of its own.",
            |s| s.errors,
        ),
        (
            "ferry_traps_total",
            "Requests that trapped, panicked or hit the memory limit.",
            |s| s.traps,
        ),
        (
            "ferry_timeouts_total",
            "Requests cut off at their deadline.",
            |s| s.timeouts,
        ),
        (
            "ferry_overloaded_total",
            "Requests refused because every instance was busy.",
            |s| s.overloaded,
        ),
        (
            "ferry_restarts_total",
            "Instances replaced after a trap or timeout.",
            |s| s.restarts,
        ),
        ("ferry_instantiations_total", "Instances created.", |s| {
            s.instantiations
        }),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (service, snapshot) in &snapshots {
            let _ = writeln!(out, "{name}{{service=\"{service}\"}} {}", value(snapshot));
        }
    }
    let _ = writeln!(
        out,
        "# HELP ferry_in_flight Requests running now.\n# TYPE ferry_in_flight gauge"
    );
    for (service, snapshot) in &snapshots {
        let _ = writeln!(
            out,
            "ferry_in_flight{{service=\"{service}\"}} {}",
            snapshot.in_flight
        );
    }
    let _ = writeln!(
        out,
        "# HELP ferry_request_duration_seconds Time from arrival at the plugin to the answer.\n# TYPE ferry_request_duration_seconds summary"
    );
    for (service, snapshot) in &snapshots {
        for (quantile, ms) in [("0.5", snapshot.p50_ms), ("0.99", snapshot.p99_ms)] {
            if let Some(ms) = ms {
                let _ = writeln!(
                    out,
                    "ferry_request_duration_seconds{{service=\"{service}\",quantile=\"{quantile}\"}} {}",
                    ms / 1000.0
                );
            }
        }
    }
    ("text/plain; version=0.0.4", out)
}
