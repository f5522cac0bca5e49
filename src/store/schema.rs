//! The schema: the original two tables, kept as they were, plus our additions, migrated by `user_version`.

use rusqlite::{Connection, params};

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = 4;

/// The original tables, column for column (docs/ARCHITECTURE.md, "Original schema kept column
/// for column"). `IF NOT EXISTS` adopts a database the Python daemon made.
const ORIGINAL_TABLES: &str = "
CREATE TABLE IF NOT EXISTS health_metrics (
    id INTEGER PRIMARY KEY,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    value REAL NOT NULL,
    threshold_warning REAL,
    threshold_critical REAL,
    timestamp TEXT NOT NULL,
    unit TEXT,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS health_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    alert_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    metadata TEXT,
    resolved BOOLEAN DEFAULT 0,
    resolved_at TEXT
);
";

/// Our additions (version 1).
///
/// Indexes are chosen for write speed: `(timestamp, status)` only ever grows at its right edge,
/// serves the summary's recent counts without touching the table, and serves pruning. A
/// `(type, id, metric, timestamp)` index would cut batched inserts ~15x (docs/ARCHITECTURE.md,
/// "Index choice").
const V1: &str = "
CREATE TABLE IF NOT EXISTS monitors (
    kind TEXT NOT NULL CHECK (kind IN ('agent', 'workspace')),
    id TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    added_at TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS idx_health_metrics_timestamp_status
    ON health_metrics (timestamp, status);
CREATE INDEX IF NOT EXISTS idx_health_alerts_active
    ON health_alerts (resource_type, resource_id, alert_type) WHERE resolved = 0;
";

/// Version 2: operators' silences. `metric` is '' for "every alert of the resource", so the
/// primary key treats it like any other value (NULLs would never conflict).
const V2: &str = "
CREATE TABLE IF NOT EXISTS silences (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    metric TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    comment TEXT,
    PRIMARY KEY (resource_type, resource_id, metric)
);
";

/// Version 3: the Gas Town escalations opened for alerts, so a restarted daemon can close the
/// ones whose alert ended while it was down (an open escalation gets louder every 4 h). One row
/// per alert, keyed by its `health_alerts` id (no foreign key: pruned alerts keep their row
/// until it is pruned too). `severity` is the `gt escalate -s` level it was opened at;
/// `closed_at` stays NULL while it is open.
const V3: &str = "
CREATE TABLE IF NOT EXISTS gastown_escalations (
    alert_id INTEGER PRIMARY KEY,
    escalation_id TEXT NOT NULL,
    resource_type TEXT,
    resource_id TEXT,
    alert_type TEXT,
    severity TEXT,
    escalated_at TEXT NOT NULL,
    closed_at TEXT,
    close_reason TEXT
);
";

/// Version 4: checks among the monitors (SQLite cannot change a CHECK constraint, so the
/// table is rebuilt when its constraint predates them, see [`allow_check_monitors`]), and the
/// series pushed by `report`, with what they were last given, so they survive a restart.
/// `ttl_secs` is NULL for the default (3 intervals). Only a new or changed definition is
/// written, not every report: the values themselves are `health_metrics` rows. And the
/// rollups of every series for charts (`crate::rollup`): one row per series and bucket
/// (`width` 60 or 600 s, `bucket_start` in Unix seconds), keyed by series first so a chart
/// reads one range; the `(width, bucket_start)` index serves pruning.
const V4: &str = "
CREATE TABLE IF NOT EXISTS pushed_series (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    threshold_warning REAL,
    threshold_critical REAL,
    ttl_secs REAL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (resource_type, resource_id, metric_name)
);
CREATE TABLE IF NOT EXISTS metric_rollups (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    width INTEGER NOT NULL,
    bucket_start INTEGER NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    sum REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (resource_type, resource_id, metric_name, width, bucket_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_metric_rollups_age ON metric_rollups (width, bucket_start);
";

/// Rebuilds `monitors` with a constraint that admits checks, keeping every row.
fn allow_check_monitors(conn: &Connection) -> rusqlite::Result<()> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'monitors'",
        [],
        |r| r.get(0),
    )?;
    if sql.contains("'check'") {
        return Ok(());
    }
    conn.execute_batch(
        "CREATE TABLE monitors_v4 (
            kind TEXT NOT NULL CHECK (kind IN ('agent', 'workspace', 'check')),
            id TEXT NOT NULL,
            options TEXT NOT NULL DEFAULT '{}',
            added_at TEXT NOT NULL,
            PRIMARY KEY (kind, id)
        );
        INSERT INTO monitors_v4 (kind, id, options, added_at)
            SELECT kind, id, options, added_at FROM monitors;
        DROP TABLE monitors;
        ALTER TABLE monitors_v4 RENAME TO monitors;",
    )
}

/// Columns added to `health_alerts` (new columns are allowed by the contract).
const ALERT_COLUMNS: &[(&str, &str)] = &[
    ("last_notified_at", "TEXT"),
    ("acknowledged_at", "TEXT"),
    ("acknowledged_by", "TEXT"),
];

/// Brings a new, original or older database up to [`SCHEMA_VERSION`], in one transaction.
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        conn.execute_batch(ORIGINAL_TABLES)?;
        for (column, decl) in ALERT_COLUMNS {
            if !has_column(conn, "health_alerts", column)? {
                conn.execute_batch(&format!(
                    "ALTER TABLE health_alerts ADD COLUMN {column} {decl}"
                ))?;
            }
        }
        conn.execute_batch(V1)?;
        conn.execute_batch(V2)?;
        conn.execute_batch(V3)?;
        allow_check_monitors(conn)?;
        conn.execute_batch(V4)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?;
    stmt.exists(params![table, column])
}

/// Names of the tables in the database, sorted.
pub fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_original_tables_exist_after_initialization() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let tables = table_names(&conn).unwrap();
        assert!(tables.contains(&"health_metrics".to_string()), "{tables:?}");
        assert!(tables.contains(&"health_alerts".to_string()), "{tables:?}");
        assert!(tables.contains(&"monitors".to_string()), "{tables:?}");
        assert!(
            tables.contains(&"gastown_escalations".to_string()),
            "{tables:?}"
        );
    }

    /// A database as version `parts` of the schema left it (`[V1, V2]` is version 2), before
    /// its `user_version` is set.
    fn database_at(parts: &[&str]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(ORIGINAL_TABLES).unwrap();
        for (column, decl) in ALERT_COLUMNS {
            conn.execute_batch(&format!(
                "ALTER TABLE health_alerts ADD COLUMN {column} {decl}"
            ))
            .unwrap();
        }
        for part in parts {
            conn.execute_batch(part).unwrap();
        }
        conn
    }

    #[test]
    fn a_version_2_database_gains_the_escalations_table_and_keeps_its_rows() {
        let conn = database_at(&[V1, V2]);
        conn.execute_batch(
            "INSERT INTO silences (resource_type, resource_id, created_at, expires_at)
                VALUES ('agent', 'a1', '2026-01-01T00:00:00.000000Z', '2027-01-01T00:00:00.000000Z');
             PRAGMA user_version = 2;",
        )
        .unwrap();
        migrate(&conn).unwrap();
        assert!(
            table_names(&conn)
                .unwrap()
                .contains(&"gastown_escalations".to_string())
        );
        let silences: i64 = conn
            .query_row("SELECT count(*) FROM silences", [], |r| r.get(0))
            .unwrap();
        assert_eq!(silences, 1);
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn a_version_3_database_takes_check_monitors_and_keeps_its_monitors() {
        let conn = database_at(&[V1, V2, V3]);
        conn.execute_batch(
            "INSERT INTO monitors (kind, id, options, added_at) VALUES ('agent', 'a1', '{\"pid\":7}', 't');
             PRAGMA user_version = 3;",
        )
        .unwrap();
        let refused = conn.execute(
            "INSERT INTO monitors (kind, id, added_at) VALUES ('check', 'c1', 't')",
            [],
        );
        assert!(refused.is_err(), "version 3 refuses checks");
        migrate(&conn).unwrap();
        conn.execute(
            "INSERT INTO monitors (kind, id, added_at) VALUES ('check', 'c1', 't')",
            [],
        )
        .unwrap();
        let a1: String = conn
            .query_row("SELECT options FROM monitors WHERE id = 'a1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(a1, r#"{"pid":7}"#);
        assert!(
            conn.execute(
                "INSERT INTO monitors (kind, id, added_at) VALUES ('gremlin', 'g', 't')",
                [],
            )
            .is_err(),
            "other kinds are still refused"
        );
        assert!(
            table_names(&conn)
                .unwrap()
                .contains(&"pushed_series".into())
        );
    }

    #[test]
    fn the_original_columns_are_all_there_in_order() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let columns = |table: &str| -> Vec<String> {
            let mut stmt = conn
                .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                .unwrap();
            stmt.query_map([table], |r| r.get(0))
                .unwrap()
                .map(|c| c.unwrap())
                .collect()
        };
        assert_eq!(
            columns("health_metrics"),
            [
                "id",
                "resource_type",
                "resource_id",
                "metric_name",
                "value",
                "threshold_warning",
                "threshold_critical",
                "timestamp",
                "unit",
                "status"
            ]
        );
        assert_eq!(
            columns("health_alerts")[..10],
            [
                "id",
                "resource_type",
                "resource_id",
                "alert_type",
                "severity",
                "message",
                "timestamp",
                "metadata",
                "resolved",
                "resolved_at"
            ]
        );
    }

    #[test]
    fn a_database_made_by_the_original_daemon_is_adopted_with_its_rows() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE health_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, resource_type TEXT,
                resource_id TEXT, metric_name TEXT, value REAL, threshold_warning REAL,
                threshold_critical REAL, timestamp TEXT, unit TEXT, status TEXT);
             CREATE TABLE health_alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, resource_type TEXT,
                resource_id TEXT, alert_type TEXT, severity TEXT, message TEXT, timestamp TEXT,
                metadata TEXT, resolved BOOLEAN DEFAULT FALSE, resolved_at TEXT);
             INSERT INTO health_alerts (resource_type, resource_id, alert_type, severity, message, timestamp)
                VALUES ('memory', 'system', 'memory_usage_percent', 'unhealthy', 'old', '2025-01-01T00:00:00');",
        )
        .unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM health_alerts WHERE last_notified_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }
}
