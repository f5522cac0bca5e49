//! `/metrics`: the status document as Prometheus series, encoded by prometheus-client.
//!
//! Every scrape renders a fresh registry from one [`Summary`], so the series are exactly what
//! `status --json` says at that moment: no second bookkeeping that could drift from it.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use crate::model::HealthStatus;
use crate::report::WriterReport;
use crate::summary::Summary;

/// The `Content-Type` of what [`render_metrics`] produces: the Prometheus text format 0.0.4,
/// which both Prometheus and `promtool check metrics` read.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Prefix of every series name.
const PREFIX: &str = "health_monitor";

/// A status as a number, worse is higher: healthy 0, degraded 1, unhealthy 2, critical 3.
/// `unknown` (no data or no verdict yet) is -1, so a rule such as `status >= 2` never fires on
/// it and `status < 0` finds it.
pub(crate) fn status_code(status: HealthStatus) -> i64 {
    match status {
        HealthStatus::Unknown => -1,
        HealthStatus::Healthy => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unhealthy => 2,
        HealthStatus::Critical => 3,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    resource_type: String,
    resource_id: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource_type: String,
    resource_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabels {
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActorLabels {
    actor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectorLabels {
    collector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
    outcome: String,
}

/// A gauge holding a float (prometheus-client's default gauge holds an integer).
type FloatGauge = Gauge<f64, AtomicU64>;

/// Registers `metric` and hands back a handle to fill it (metrics share their state on clone).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// An unlabelled counter already at `value`: the daemon keeps the count, the scrape copies it.
fn counter_at(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// An unlabelled gauge at `value`.
fn gauge_at(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

/// The summary as Prometheus text exposition (see [`CONTENT_TYPE`]).
pub fn render_metrics(summary: &Summary) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    register_metric_values(&mut registry, summary);
    register_resource_statuses(&mut registry, summary);
    register_alerts(&mut registry, summary);
    register_actors_and_cycles(&mut registry, summary);
    register_notifications(&mut registry, summary);
    if let Some(w) = &summary.writer {
        register_writer(&mut registry, w);
    }
    register_analyzer(&mut registry, summary);
    if let Some(events) = &summary.events {
        register_events(&mut registry, events);
    }
    encode_text(&registry)
}

/// `metric_value` and `metric_status`: each metric's latest value and its status.
fn register_metric_values(registry: &mut Registry, summary: &Summary) {
    let values = registered(
        registry,
        "metric_value",
        "Latest value of each metric, in the unit the catalog gives it",
        Family::<MetricLabels, FloatGauge>::default(),
    );
    let statuses = registered(
        registry,
        "metric_status",
        "Status of each metric's latest value: -1 unknown, 0 healthy, 1 degraded, 2 unhealthy, 3 critical",
        Family::<MetricLabels, Gauge>::default(),
    );
    for r in &summary.resources {
        let resource_type = r.resource_type.to_string();
        for m in &r.metrics {
            let labels = MetricLabels {
                resource_type: resource_type.clone(),
                resource_id: r.resource_id.clone(),
                metric: m.metric_name.clone(),
            };
            values.get_or_create(&labels).set(m.value);
            statuses.get_or_create(&labels).set(status_code(m.status));
        }
    }
}

/// `resource_status`: each resource's worst status.
fn register_resource_statuses(registry: &mut Registry, summary: &Summary) {
    let resources = registered(
        registry,
        "resource_status",
        "Worst status of each resource, degraded while its collector is impaired: -1 unknown, 0 healthy, 1 degraded, 2 unhealthy, 3 critical",
        Family::<ResourceLabels, Gauge>::default(),
    );
    for r in &summary.resources {
        resources
            .get_or_create(&ResourceLabels {
                resource_type: r.resource_type.to_string(),
                resource_id: r.resource_id.clone(),
            })
            .set(status_code(r.status));
    }
}

/// `active_alerts`: active alerts by severity, every severity present.
fn register_alerts(registry: &mut Registry, summary: &Summary) {
    let alerts = registered(
        registry,
        "active_alerts",
        "Active alerts by severity",
        Family::<SeverityLabels, Gauge>::default(),
    );
    // Every severity an alert can take is present, at 0 when none is active, so a query over
    // it never sees a series vanish and come back.
    for severity in HealthStatus::ALL.into_iter().filter(|s| s.is_breach()) {
        alerts
            .get_or_create(&SeverityLabels {
                severity: severity.to_string(),
            })
            .set(0);
    }
    for a in &summary.active_alerts {
        alerts
            .get_or_create(&SeverityLabels {
                severity: a.severity.to_string(),
            })
            .inc();
    }
}

/// `actor_restarts` and `cycle_duration_seconds`: supervised actors and collector cycles.
fn register_actors_and_cycles(registry: &mut Registry, summary: &Summary) {
    let restarts = registered(
        registry,
        "actor_restarts",
        "Restarts of each supervised actor since the daemon started",
        Family::<ActorLabels, Counter>::default(),
    );
    for a in &summary.actors {
        restarts
            .get_or_create(&ActorLabels {
                actor: a.name.clone(),
            })
            .inc_by(u64::from(a.restarts));
    }
    let cycles = registered(
        registry,
        "cycle_duration_seconds",
        "Wall time of each collector's last measurement cycle",
        Family::<CollectorLabels, FloatGauge>::default(),
    );
    for (collector, stat) in &summary.collector_cycles {
        cycles
            .get_or_create(&CollectorLabels {
                collector: collector.clone(),
            })
            .set(stat.last_seconds);
    }
}

/// `notifications`: alert notices per sink and outcome.
fn register_notifications(registry: &mut Registry, summary: &Summary) {
    let notices = registered(
        registry,
        "notifications",
        "Alert notices per sink by outcome: sent, failed (gave up after retries), dropped \
         (queue full), retried (extra attempts)",
        Family::<SinkLabels, Counter>::default(),
    );
    for r in &summary.notifications {
        for (outcome, n) in [
            ("sent", r.sent),
            ("failed", r.failed),
            ("dropped", r.dropped),
            ("retried", r.retries),
        ] {
            notices
                .get_or_create(&SinkLabels {
                    sink: r.sink.clone(),
                    outcome: outcome.to_string(),
                })
                .inc_by(n);
        }
    }
}

/// `writer_*`: the database writer's gauges, then its counters.
fn register_writer(registry: &mut Registry, w: &WriterReport) {
    let gauges = [
        (
            "writer_queue_depth",
            "Messages waiting for the database writer",
            w.queue_depth,
        ),
        (
            "writer_buffered_rows",
            "Rows accepted by the writer and not yet committed",
            w.buffered_rows,
        ),
        (
            "writer_failing",
            "1 while database commits fail (see writer.last_error in the status)",
            u64::from(w.failing),
        ),
        (
            "writer_database_file_lost",
            "1 while the database path does not lead to the daemon's file (deleted or replaced; see writer.database_file in the status)",
            u64::from(w.database_file.as_ref().is_some_and(|i| i.ongoing)),
        ),
    ];
    let counters = [
        (
            "writer_rows_written",
            "Rows committed to the database",
            w.rows_written,
        ),
        (
            "writer_database_file_incidents",
            "Times the database path lost the daemon's file (deleted or replaced) since start",
            w.file_incidents,
        ),
        (
            "writer_rows_dropped",
            "Metric rows dropped because the writer's buffer hit its memory cap",
            w.rows_dropped,
        ),
        (
            "writer_rows_refused",
            "Rows refused because the writer's queue was full",
            w.rows_refused,
        ),
        (
            "writer_rows_pruned",
            "Rows deleted for being past their retention",
            w.rows_pruned,
        ),
        (
            "writer_commit_failures",
            "Failed database commits",
            w.commit_failures,
        ),
    ];
    register_plain(registry, &gauges, &counters);
}

/// `measurements_*` and `analyzer_queue_depth`: what the analyzer took, refused and has queued.
fn register_analyzer(registry: &mut Registry, summary: &Summary) {
    let counters = [
        (
            "measurements_accepted",
            "Measurements queued for the analyzer",
            summary.measurements_accepted,
        ),
        (
            "measurements_refused",
            "Measurements refused because the analyzer's queue was full",
            summary.measurements_refused,
        ),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, counter_at(value));
    }
    registry.register(
        "analyzer_queue_depth",
        "Collector batches waiting for the analyzer",
        gauge_at(summary.analyzer_queue_depth),
    );
}

/// `kernel_*`: the kernel notifications that bring measurements forward (see `crate::watch`).
fn register_events(registry: &mut Registry, events: &crate::watch::WatchStats) {
    let gauges = [
        (
            "kernel_inotify_watches",
            "inotify watches held on the daemon's one instance (directories watched)",
            events.watches as u64,
        ),
        (
            "kernel_pidfds",
            "Agents' root processes held by a pidfd (their end is told at once)",
            events.pidfds as u64,
        ),
    ];
    let counters = [
        (
            "kernel_inotify_events",
            "inotify events read",
            events.events,
        ),
        (
            "kernel_inotify_overflows",
            "Times the kernel's inotify queue overflowed (everything watched was measured again)",
            events.overflows,
        ),
        (
            "kernel_pokes",
            "Measurements asked for out of cycle by a kernel notification",
            events.pokes,
        ),
        (
            "kernel_process_exits",
            "Agents' root processes whose end a pidfd told",
            events.exits,
        ),
    ];
    register_plain(registry, &gauges, &counters);
}

/// Registers unlabelled gauges and counters, as `(name, help, value)`.
fn register_plain(
    registry: &mut Registry,
    gauges: &[(&'static str, &'static str, u64)],
    counters: &[(&'static str, &'static str, u64)],
) {
    for &(name, help, value) in gauges {
        registry.register(name, help, gauge_at(value));
    }
    for &(name, help, value) in counters {
        registry.register(name, help, counter_at(value));
    }
}

/// The registry in the text format (an encoder error is logged, not returned).
fn encode_text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a label type.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::error!("cannot encode metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResourceType;
    use crate::report::{ActorReport, ChildState, CycleStat, SinkReport, WriterReport};
    use crate::summary::{AlertView, MetricView, ResourceView, SummaryInputs, build};

    fn metric(name: &str, value: f64, status: HealthStatus) -> MetricView {
        MetricView {
            metric_name: name.into(),
            value,
            unit: "%".into(),
            status,
            timestamp: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    fn alert(severity: HealthStatus) -> AlertView {
        AlertView {
            id: Some(1),
            resource_type: ResourceType::Memory,
            resource_id: "system".into(),
            alert_type: "memory_usage_percent".into(),
            severity,
            message: "high".into(),
            timestamp: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    fn sample() -> Summary {
        let mut s = build(SummaryInputs::default(), chrono::Utc::now());
        s.resources = vec![
            ResourceView {
                resource_type: ResourceType::Memory,
                resource_id: "system".into(),
                status: HealthStatus::Critical,
                metrics: vec![metric("memory_usage_percent", 96.5, HealthStatus::Critical)],
            },
            ResourceView {
                resource_type: ResourceType::Workspace,
                resource_id: r#"odd"id\x"#.into(),
                status: HealthStatus::Degraded,
                metrics: vec![metric("workspace_exists", 1.0, HealthStatus::Healthy)],
            },
            ResourceView {
                resource_type: ResourceType::Agent,
                resource_id: "a1".into(),
                status: HealthStatus::Unknown,
                metrics: vec![],
            },
        ];
        s.active_alerts = vec![alert(HealthStatus::Critical), alert(HealthStatus::Critical)];
        s.actors = vec![
            ActorReport {
                name: "system".into(),
                state: ChildState::Running,
                restarts: 2,
            },
            ActorReport {
                name: "workspace:w1".into(),
                state: ChildState::Parked,
                restarts: 0,
            },
        ];
        s.writer = Some(WriterReport {
            queue_depth: 3,
            buffered_rows: 4,
            rows_written: 100,
            rows_dropped: 5,
            rows_refused: 6,
            rows_pruned: 7,
            commit_failures: 8,
            failing: true,
            last_error: Some("database is locked".into()),
            ..Default::default()
        });
        s.measurements_accepted = 42;
        s.measurements_refused = 1;
        s.analyzer_queue_depth = 9;
        s.collector_cycles = [("system".to_string(), CycleStat { last_seconds: 0.25 })].into();
        s.notifications = vec![SinkReport {
            sink: "webhook:https://hooks.example/…".into(),
            sent: 11,
            failed: 1,
            retries: 3,
            dropped: 0,
            queued: 0,
            last_error: None,
        }];
        s.events = Some(crate::watch::WatchStats {
            available: true,
            watches: 12,
            pidfds: 3,
            events: 500,
            overflows: 1,
            pokes: 40,
            exits: 2,
        });
        s
    }

    /// The sample lines of the exposition, without HELP and TYPE comments.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_series_is_rendered_with_its_labels_and_value() {
        let text = render_metrics(&sample());
        let lines = samples(&text);
        for expected in [
            r#"health_monitor_metric_value{resource_type="memory",resource_id="system",metric="memory_usage_percent"} 96.5"#,
            r#"health_monitor_metric_status{resource_type="memory",resource_id="system",metric="memory_usage_percent"} 3"#,
            r#"health_monitor_resource_status{resource_type="memory",resource_id="system"} 3"#,
            r#"health_monitor_resource_status{resource_type="agent",resource_id="a1"} -1"#,
            r#"health_monitor_active_alerts{severity="critical"} 2"#,
            r#"health_monitor_active_alerts{severity="unhealthy"} 0"#,
            r#"health_monitor_actor_restarts_total{actor="system"} 2"#,
            r#"health_monitor_actor_restarts_total{actor="workspace:w1"} 0"#,
            r#"health_monitor_cycle_duration_seconds{collector="system"} 0.25"#,
            r#"health_monitor_notifications_total{sink="webhook:https://hooks.example/…",outcome="sent"} 11"#,
            r#"health_monitor_notifications_total{sink="webhook:https://hooks.example/…",outcome="failed"} 1"#,
            r#"health_monitor_notifications_total{sink="webhook:https://hooks.example/…",outcome="retried"} 3"#,
            "health_monitor_writer_queue_depth 3",
            "health_monitor_writer_buffered_rows 4",
            "health_monitor_writer_rows_written_total 100",
            "health_monitor_writer_rows_dropped_total 5",
            "health_monitor_writer_rows_refused_total 6",
            "health_monitor_writer_rows_pruned_total 7",
            "health_monitor_writer_commit_failures_total 8",
            "health_monitor_writer_failing 1",
            "health_monitor_measurements_accepted_total 42",
            "health_monitor_measurements_refused_total 1",
            "health_monitor_analyzer_queue_depth 9",
            "health_monitor_kernel_inotify_watches 12",
            "health_monitor_kernel_pidfds 3",
            "health_monitor_kernel_inotify_events_total 500",
            "health_monitor_kernel_inotify_overflows_total 1",
            "health_monitor_kernel_pokes_total 40",
            "health_monitor_kernel_process_exits_total 2",
        ] {
            assert!(lines.contains(&expected), "missing {expected}\n{text}");
        }
        assert!(
            text.contains("# TYPE health_monitor_actor_restarts_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE health_monitor_metric_value gauge"),
            "{text}"
        );
        // The 0.0.4 text format has no EOF marker (that is OpenMetrics).
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render_metrics(&sample());
        let expected = r#"health_monitor_metric_value{resource_type="workspace",resource_id="odd\"id\\x",metric="workspace_exists"} 1.0"#;
        assert!(samples(&text).contains(&expected), "{text}");
    }

    #[test]
    fn statuses_map_to_codes_that_order_like_the_statuses() {
        let codes: Vec<i64> = HealthStatus::ALL.into_iter().map(status_code).collect();
        assert_eq!(codes, vec![-1, 0, 1, 2, 3]);
    }

    #[test]
    fn an_offline_summary_has_no_writer_series_but_zero_filled_alerts() {
        let s = build(SummaryInputs::default(), chrono::Utc::now());
        let text = render_metrics(&s);
        assert!(!text.contains("writer_"), "{text}");
        let lines = samples(&text);
        assert!(lines.contains(&r#"health_monitor_active_alerts{severity="critical"} 0"#));
        assert!(lines.contains(&r#"health_monitor_active_alerts{severity="unhealthy"} 0"#));
        assert!(lines.contains(&"health_monitor_measurements_accepted_total 0"));
    }

    #[test]
    fn each_family_group_registers_its_own_families_in_render_order() {
        type Group = fn(&mut Registry, &Summary);
        let s = sample();
        let families = |group: Group| {
            let mut registry = Registry::with_prefix(PREFIX);
            group(&mut registry, &s);
            let text = encode_text(&registry);
            text.lines()
                .filter_map(|l| l.strip_prefix("# TYPE health_monitor_"))
                .map(|l| l.split(' ').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let groups: [(Group, &[&str]); 8] = [
            (register_metric_values, &["metric_value", "metric_status"]),
            (register_resource_statuses, &["resource_status"]),
            (register_alerts, &["active_alerts"]),
            (
                register_actors_and_cycles,
                &["actor_restarts_total", "cycle_duration_seconds"],
            ),
            (register_notifications, &["notifications_total"]),
            (|r, s| register_writer(r, s.writer.as_ref().unwrap()), &[]),
            (
                register_analyzer,
                &[
                    "measurements_accepted_total",
                    "measurements_refused_total",
                    "analyzer_queue_depth",
                ],
            ),
            (
                |r, s| register_events(r, s.events.as_ref().unwrap()),
                &[
                    "kernel_inotify_watches",
                    "kernel_pidfds",
                    "kernel_inotify_events_total",
                    "kernel_inotify_overflows_total",
                    "kernel_pokes_total",
                    "kernel_process_exits_total",
                ],
            ),
        ];
        let mut all = Vec::new();
        for (group, expected) in groups {
            let got = families(group);
            if expected.is_empty() {
                assert_eq!(got.len(), 10, "{got:?}");
                assert!(got.iter().all(|f| f.starts_with("writer_")), "{got:?}");
            } else {
                assert_eq!(got, expected);
            }
            all.extend(got);
        }
        let rendered: Vec<String> = render_metrics(&s)
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE health_monitor_"))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(rendered, all);
    }
}
