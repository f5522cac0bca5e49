//! The Prometheus rules and the Grafana dashboard of `contrib/` against the real tools and the
//! real daemon: promtool checks the rules and runs their unit tests, the dashboard parses and
//! its queries are valid PromQL, and every series either names is one a running daemon's
//! `/metrics` exports.
//!
//! promtool comes with Debian's `prometheus` package, which `.ci/run` installs: where it is
//! missing these tests fail and say how to install it (they do not skip).

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Env, FakeAgent, wait_until};
use serde_json::Value;

const RULES: &str = "prometheus/health-monitor.rules.yml";
const RULE_TESTS: &str = "prometheus/health-monitor.rules.test.yml";
const DASHBOARD: &str = "grafana/health-monitor.json";

/// The Nagios plugin the daemon runs as a check (Debian's monitoring-plugins).
const CHECK_DUMMY: &str = "/usr/lib/nagios/plugins/check_dummy";

/// A file under `contrib/`.
fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(rel)
}

fn read_contrib(rel: &str) -> String {
    fs::read_to_string(contrib(rel)).unwrap_or_else(|e| panic!("cannot read contrib/{rel}: {e}"))
}

/// Runs promtool; fails, with how to install it, where it is missing.
fn promtool(args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's prometheus package, which has it \
             (apt-get install -y prometheus; .ci/run installs it)"
            )
        })
}

/// promtool that must succeed; returns its stdout.
fn promtool_ok(args: &[&str]) -> String {
    let out = promtool(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number in promtool's `SUCCESS: N rules found`.
fn rules_found(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("SUCCESS: "))
        .and_then(|l| l.strip_suffix(" rules found"))
        .unwrap_or_else(|| panic!("no rule count in promtool's output:\n{stdout}"))
        .parse()
        .unwrap()
}

/// One rule of a rule file.
#[derive(Debug)]
struct Rule {
    /// True for an alerting rule, false for a recording rule.
    alert: bool,
    /// Its alert name or recorded series name.
    name: String,
    expr: String,
}

/// How far a line is indented.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of `key: value` in a trimmed YAML line, unquoted.
fn yaml_value<'a>(trimmed: &'a str, key: &str) -> Option<&'a str> {
    let rest = trimmed.strip_prefix(key)?.strip_prefix(':')?.trim();
    Some(
        rest.strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
            .unwrap_or(rest),
    )
}

/// The rules of a Prometheus rule file, read line by line: a rule starts at `- alert:` or
/// `- record:`, and its `expr:` is a plain scalar on its line or a block scalar (`|`, `>`)
/// below it. promtool's rule count keeps this reader honest (see the tests).
fn parse_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim();
        let item = trimmed.strip_prefix("- ").map(str::trim);
        if let Some(name) = item.and_then(|t| yaml_value(t, "alert")) {
            rules.push(Rule {
                alert: true,
                name: name.to_string(),
                expr: String::new(),
            });
        } else if let Some(name) = item.and_then(|t| yaml_value(t, "record")) {
            rules.push(Rule {
                alert: false,
                name: name.to_string(),
                expr: String::new(),
            });
        } else if let Some(value) = yaml_value(trimmed, "expr") {
            let rule = rules
                .last_mut()
                .unwrap_or_else(|| panic!("expr outside a rule at line {}", i + 1));
            assert!(rule.expr.is_empty(), "{}: two exprs", rule.name);
            if value.starts_with('|') || value.starts_with('>') {
                let key_indent = indent(lines[i]);
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > key_indent)
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                rule.expr = block.join("\n").trim().to_string();
            } else {
                rule.expr = value.to_string();
            }
        }
        i += 1;
    }
    for rule in &rules {
        assert!(!rule.expr.is_empty(), "{}: no expr found", rule.name);
    }
    rules
}

/// PromQL's functions (what else may stand before a parenthesis).
const FUNCTIONS: &str = "\
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes \
clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year \
days_in_month deg delta deriv exp floor histogram_quantile holt_winters hour idelta \
increase irate label_join label_replace last_over_time ln log10 log2 max_over_time \
min_over_time minute month pi predict_linear present_over_time quantile_over_time rad \
rate resets round scalar sgn sin sinh sort sort_desc sqrt stddev_over_time \
stdvar_over_time sum_over_time tan tanh time timestamp vector year";

/// Aggregation operators: followed by `(` or by a `by`/`without` clause.
const AGGREGATIONS: &str =
    "avg bottomk count count_values group max min quantile stddev stdvar sum topk";

/// Keywords followed by a parenthesized list of label names.
const GROUPINGS: &str = "by without on ignoring group_left group_right";

/// Other keywords (binary operators, modifiers, literals).
const KEYWORDS: &str = "and or unless bool offset atan2 inf nan";

/// True when `word` is one of the space-separated words of `list`.
fn listed(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

/// The series and label names an expression uses.
#[derive(Debug, Default)]
struct Names {
    series: BTreeSet<String>,
    labels: BTreeSet<String>,
    /// Values of the `metric` label it matches: our metrics' names.
    metric_values: BTreeSet<String>,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string literal that starts at `at`.
fn skip_string(chars: &[char], at: usize) -> Result<usize, String> {
    let quote = chars[at];
    let mut i = at + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string at {at}"))
}

fn skip_spaces(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// One label matcher (or a sample's label): name, operator, value (unescaped only of `\"`).
type Matcher = (String, String, String);

/// Reads a `{name op "value", ...}` block starting at `at` (a selector's matchers or a sample's
/// labels); returns the index past it and its matchers.
fn label_block(chars: &[char], at: usize) -> Result<(usize, Vec<Matcher>), String> {
    let mut matchers = Vec::new();
    let mut i = at + 1;
    loop {
        i = skip_spaces(chars, i);
        match chars.get(i) {
            None => return Err(format!("unterminated {{ at {at}")),
            Some('}') => return Ok((i + 1, matchers)),
            Some(',') => i += 1,
            Some(c) if is_word_char(*c) => {
                let start = i;
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                i = skip_spaces(chars, i);
                let op_start = i;
                while i < chars.len() && "=!~".contains(chars[i]) {
                    i += 1;
                }
                let op: String = chars[op_start..i].iter().collect();
                i = skip_spaces(chars, i);
                if !matches!(chars.get(i), Some('"' | '\'' | '`')) {
                    return Err(format!("no label value at {i}"));
                }
                let end = skip_string(chars, i)?;
                let value: String = chars[i + 1..end - 1].iter().collect();
                matchers.push((name, op, value.replace("\\\"", "\"")));
                i = end;
            }
            Some(c) => return Err(format!("unexpected {c:?} in label matchers at {i}")),
        }
    }
}

/// The series and label names of a PromQL expression. Grafana's variables (`$job`,
/// `${datasource}`, `$__rate_interval`) are skipped; a call of an unknown function is an error.
fn names_in(expr: &str) -> Result<Names, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i)?;
        } else if c == '{' {
            let (end, matchers) = label_block(&chars, i)?;
            for (name, op, value) in matchers {
                // The metric names a `metric` matcher lists (`a` or `a|b`, not a wider regex).
                if name == "metric" && (op == "=" || op == "=~") {
                    names.metric_values.extend(
                        value
                            .split('|')
                            .filter(|v| v.chars().all(is_word_char))
                            .map(String::from),
                    );
                }
                names.labels.insert(name);
            }
            i = end;
        } else if c == '[' {
            // A range or a subquery: durations and Grafana variables only.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (1.5, 1e3, 0x1f, 5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_spaces(&chars, i);
            let paren = chars.get(next) == Some(&'(');
            if listed(GROUPINGS, &word) {
                if paren {
                    let close = (next..chars.len())
                        .find(|&j| chars[j] == ')')
                        .ok_or(format!("unclosed {word}("))?;
                    let list: String = chars[next + 1..close].iter().collect();
                    names.labels.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = close + 1;
                }
            } else if listed(KEYWORDS, &word.to_ascii_lowercase()) || listed(AGGREGATIONS, &word) {
                // An operator, a modifier or a literal.
            } else if !paren {
                names.series.insert(word);
            } else if !listed(FUNCTIONS, &word) {
                return Err(format!("unknown function {word}()"));
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// The series and label names of a Grafana variable's query: `label_values(SELECTOR, LABEL)`,
/// `label_values(LABEL)` or `query_result(EXPR)`; any other form is refused.
fn names_in_variable(query: &str) -> Result<Names, String> {
    let query = query.trim();
    if let Some(inner) = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
    {
        let (selector, label) = inner.rsplit_once(',').unwrap_or(("", inner));
        let mut names = if selector.trim().is_empty() {
            Names::default()
        } else {
            names_in(selector)?
        };
        names.labels.insert(label.trim().to_string());
        Ok(names)
    } else if let Some(inner) = query
        .strip_prefix("query_result(")
        .and_then(|q| q.strip_suffix(')'))
    {
        names_in(inner)
    } else {
        Err(format!("unsupported variable query {query}"))
    }
}

#[test]
fn names_are_read_from_expressions() {
    let names = names_in(
        r#"sum by (job, sink) (increase(health_monitor_notifications_total{outcome=~"a|b",x="}{"}[$__rate_interval] offset 5m))
         > 0 and on (instance) up == 1 or absent(foo:bar:max) unless 1.5e3 * -1 > bool vector(0)
         or max(health_monitor_resource_status{job=~"$job"}) by (resource_id)"#,
    )
    .unwrap();
    assert_eq!(
        names.series.into_iter().collect::<Vec<_>>(),
        [
            "foo:bar:max",
            "health_monitor_notifications_total",
            "health_monitor_resource_status",
            "up",
        ]
    );
    assert_eq!(
        names.labels.into_iter().collect::<Vec<_>>(),
        ["instance", "job", "outcome", "resource_id", "sink", "x"]
    );
    assert!(names_in("frobnicate(up)").is_err());
    let m =
        names_in(r#"a{metric=~"cpu_usage_percent|load_per_core"} or b{metric="x",metric!="y"}"#)
            .unwrap();
    assert_eq!(
        m.metric_values.into_iter().collect::<Vec<_>>(),
        ["cpu_usage_percent", "load_per_core", "x"]
    );
    let v =
        names_in_variable(r#"label_values(health_monitor_active_alerts{job=~"$job"}, instance)"#)
            .unwrap();
    assert_eq!(
        v.series.into_iter().collect::<Vec<_>>(),
        ["health_monitor_active_alerts"]
    );
    assert_eq!(
        v.labels.into_iter().collect::<Vec<_>>(),
        ["instance", "job"]
    );
}

#[test]
fn promtool_checks_the_rules_and_this_test_reads_all_of_them() {
    let path = contrib(RULES);
    let stdout = promtool_ok(&["check", "rules", path.to_str().unwrap()]);
    let rules = parse_rules(&read_contrib(RULES));
    assert_eq!(
        rules_found(&stdout),
        rules.len(),
        "promtool and this test disagree on the rules of {RULES}: {rules:#?}"
    );
    let mut seen = BTreeSet::new();
    for rule in &rules {
        assert!(seen.insert(&rule.name), "{} is defined twice", rule.name);
        if rule.alert {
            assert!(
                rule.name.starts_with("HealthMonitor"),
                "alert {} is not named HealthMonitor*",
                rule.name
            );
        }
    }
}

/// The indentation of a YAML line's key: past the `- ` of a list item.
fn key_indent(line: &str) -> usize {
    indent(line)
        + if line.trim_start().starts_with("- ") {
            2
        } else {
            0
        }
}

/// A YAML line's `key: value`, past the `- ` of a list item.
fn key_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let trimmed = line.trim();
    yaml_value(trimmed.strip_prefix("- ").unwrap_or(trimmed), key)
}

/// The alert-test cases of a promtool test file: for each alert name, whether some case expects
/// it to fire and whether some case expects it quiet.
fn alert_cases(text: &str) -> BTreeMap<String, (bool, bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(name) = key_value(line, "alertname") else {
            continue;
        };
        // The case is the list item holding this key: from its `- ` line down to the next line
        // indented less than its keys.
        let keys = key_indent(line);
        let start = (0..=n)
            .rev()
            .find(|&j| lines[j].trim_start().starts_with("- ") && key_indent(lines[j]) == keys)
            .unwrap_or_else(|| panic!("alertname at line {} is in no list item", n + 1));
        let end = (start + 1..lines.len())
            .find(|&j| !lines[j].trim().is_empty() && indent(lines[j]) < keys)
            .unwrap_or(lines.len());
        // No exp_alerts, `[]` or a null expect no alert; a list of alerts expects them.
        let fires = (start..end)
            .find(|&j| key_indent(lines[j]) == keys && key_value(lines[j], "exp_alerts").is_some())
            .is_some_and(|j| match key_value(lines[j], "exp_alerts").unwrap() {
                "" => lines[j + 1..end]
                    .iter()
                    .find(|l| !l.trim().is_empty())
                    .is_some_and(|l| l.trim_start().starts_with("- ")),
                v => v.starts_with('[') && v != "[]",
            });
        let entry = cases.entry(name.to_string()).or_default();
        if fires {
            entry.0 = true;
        } else {
            entry.1 = true;
        }
    }
    cases
}

#[test]
fn promtool_unit_tests_pass_and_cover_every_rule() {
    let path = contrib(RULE_TESTS);
    let stdout = promtool_ok(&["test", "rules", path.to_str().unwrap()]);
    assert!(stdout.contains("SUCCESS"), "{stdout}");

    let tests = read_contrib(RULE_TESTS);
    assert!(
        tests.contains("\n  - health-monitor.rules.yml\n"),
        "{RULE_TESTS} must test {RULES}"
    );
    let cases = alert_cases(&tests);
    let rules = parse_rules(&read_contrib(RULES));
    let mut problems = Vec::new();
    for rule in &rules {
        if rule.alert {
            match cases.get(&rule.name) {
                None => problems.push(format!("{}: no test case", rule.name)),
                Some((false, _)) => problems.push(format!("{}: no case where it fires", rule.name)),
                Some((_, false)) => {
                    problems.push(format!("{}: no case where it does not fire", rule.name))
                }
                Some(_) => {}
            }
        } else if !tests
            .lines()
            .any(|l| key_value(l, "expr") == Some(rule.name.as_str()))
        {
            problems.push(format!("{}: no promql_expr_test", rule.name));
        }
    }
    // A case for an alert that does not exist passes when it expects nothing: a typo.
    for name in cases.keys() {
        if !rules.iter().any(|r| r.alert && &r.name == name) {
            problems.push(format!(
                "test cases for {name}, which is no alert of {RULES}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every query of the dashboard, where it is and what it says: panel targets, then variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, bool)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let ref_id = target["refId"].as_str().unwrap_or("?");
            queries.push((format!("panel {title:?} {ref_id}"), expr.to_string(), false));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = var["definition"]
                .as_str()
                .or_else(|| var["query"].as_str())
                .or_else(|| var["query"]["query"].as_str())
                .unwrap_or_default();
            queries.push((format!("variable {}", var["name"]), query.to_string(), true));
        }
    }
    queries
}

fn read_dashboard() -> Value {
    serde_json::from_str(&read_contrib(DASHBOARD))
        .unwrap_or_else(|e| panic!("contrib/{DASHBOARD} is not JSON: {e}"))
}

#[test]
fn the_dashboard_parses_and_every_panel_has_a_valid_query() {
    let dashboard = read_dashboard();
    let version = dashboard["schemaVersion"].as_u64().unwrap();
    assert!((36..=41).contains(&version), "schemaVersion {version}");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(variables.contains(&"datasource"), "{variables:?}");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let kind = panel["type"].as_str().unwrap();
        assert!(
            ["timeseries", "stat", "table"].contains(&kind),
            "{title}: panel type {kind}"
        );
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(
            w > 0 && x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
            "{title}: {pos}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no target");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr: {t}"
            );
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId reused"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }

    // promtool parses each query, as a recording rule, with Grafana's variables filled in.
    let variable = regex::Regex::new(r"\$\{?(\w+)\}?").unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries = dashboard_queries(&dashboard);
    for (n, (_, query, is_variable)) in queries.iter().enumerate() {
        let expr = if *is_variable {
            let inner = query
                .trim()
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(','))
                .map_or("vector(0)", |(selector, _)| selector);
            inner.to_string()
        } else {
            query.clone()
        };
        let expr = variable.replace_all(&expr, |c: &regex::Captures| match &c[1] {
            "__rate_interval" | "__interval" | "__range" => "5m".to_string(),
            _ => ".*".to_string(),
        });
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: '{}'\n",
            expr.replace('\n', " ").replace('\'', "''")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    fs::write(&file, &rules).unwrap();
    let stdout = promtool_ok(&["check", "rules", file.to_str().unwrap()]);
    assert_eq!(rules_found(&stdout), queries.len(), "{rules}");
}

/// The series and label names a scrape of `/metrics` exports: each `# TYPE` family (a counter
/// also as `_total`, a histogram's and a summary's sample names), and every sample's name and
/// labels.
fn exported(text: &str) -> Names {
    let mut names = Names::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            names.series.insert(family.to_string());
            let suffixes: &[&str] = match kind.trim() {
                "counter" if !family.ends_with("_total") => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                names.series.insert(format!("{family}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.series.insert(line[..end].to_string());
            if line[end..].starts_with('{') {
                let chars: Vec<char> = line[end..].chars().collect();
                let (_, labels) = label_block(&chars, 0)
                    .unwrap_or_else(|e| panic!("bad sample line ({e}): {line}"));
                names
                    .labels
                    .extend(labels.into_iter().map(|(name, _, _)| name));
            }
        }
    }
    names
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(addr: &str) -> Option<String> {
    let mut reply = ureq::get(&format!("http://{addr}/metrics")).call().ok()?;
    reply.body_mut().read_to_string().ok()
}

/// `/metrics` of a daemon with something in every labelled family: a workspace, an agent (a
/// `sleep`), a pushed metric, a check and a notification sink.
fn live_metrics() -> String {
    assert!(
        Path::new(CHECK_DUMMY).exists(),
        "{CHECK_DUMMY} is missing: install monitoring-plugins (apt-get install -y \
         monitoring-plugins; .ci/run installs it)"
    );
    let env = Env::new(&format!(
        "[[check]]\nname = \"dummy\"\ncommand = [\"{CHECK_DUMMY}\", \"0\", \"ok\"]\n\n\
         [[notify.exec]]\ncommand = [\"/bin/true\"]\n"
    ));
    let workspace = env.path("w1");
    fs::create_dir(&workspace).unwrap();
    fs::write(workspace.join("file"), "data").unwrap();
    let workspace = workspace.display().to_string();
    let agent = FakeAgent::spawn();
    let pid = agent.pid().to_string();
    env.hm_ok(&["add", "workspace", "w1", "--path", &workspace]);
    env.hm_ok(&[
        "add",
        "agent",
        "a1",
        "--pid",
        &pid,
        "--workspace",
        &workspace,
    ]);
    let addr = format!("127.0.0.1:{}", free_port());
    let _daemon = env.start(&["--listen", &addr, "--interval", "0.2"]);
    env.hm_ok(&[
        "report",
        "agent",
        "a1",
        "response_time",
        "150",
        "--warning",
        "100",
        "--critical",
        "200",
        "--unit",
        "ms",
        "--ttl",
        "10m",
    ]);
    let wanted = [
        r#"resource_type="check",resource_id="dummy",metric="check_status"}"#,
        r#"resource_type="agent",resource_id="a1",metric="agent_memory_mb"}"#,
        r#"resource_type="agent",resource_id="a1",metric="response_time"}"#,
        r#"resource_type="workspace",resource_id="w1",metric="workspace_size_mb"}"#,
        "health_monitor_notifications_total{",
        "health_monitor_cycle_duration_seconds{",
        "health_monitor_writer_failing ",
    ];
    let mut text = String::new();
    wait_until("every labelled family in /metrics", || {
        text = scrape(&addr).unwrap_or_default();
        wanted.iter().all(|w| text.contains(w))
    });
    text
}

#[test]
fn every_series_the_rules_and_the_dashboard_name_is_exported() {
    let text = live_metrics();
    let exports = exported(&text);
    let rules_text = read_contrib(RULES);
    let rules = parse_rules(&rules_text);
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter(|r| !r.alert)
        .map(|r| r.name.as_str())
        .collect();
    // What Prometheus adds to every scrape: `up` and the target's labels.
    let known_series = |s: &str| s == "up" || recorded.contains(s) || exports.series.contains(s);
    let known_label =
        |l: &str| ["job", "instance", "__name__"].contains(&l) || exports.labels.contains(l);

    let mut queries: Vec<(String, Result<Names, String>)> = rules
        .iter()
        .map(|r| (format!("rule {}", r.name), names_in(&r.expr)))
        .collect();
    for (place, query, is_variable) in dashboard_queries(&read_dashboard()) {
        let names = if is_variable {
            names_in_variable(&query)
        } else {
            names_in(&query)
        };
        queries.push((format!("dashboard {place}"), names));
    }
    // Annotation templates name labels too.
    let templated = regex::Regex::new(r"\$labels\.(\w+)").unwrap();
    let mut annotations = Names::default();
    annotations.labels.extend(
        templated
            .captures_iter(&rules_text)
            .map(|c| c[1].to_string()),
    );
    queries.push(("rule annotations".to_string(), Ok(annotations)));

    // The catalog's metrics, from the table the README is generated from; checks add
    // check_status and check_duration_ms (in the table too).
    let catalog: BTreeSet<String> = health_monitor::catalog::markdown_table()
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once('`'))
        .map(|(name, _)| name.to_string())
        .collect();
    assert!(catalog.contains("check_status"), "{catalog:?}");

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (place, names) in &queries {
        let names = match names {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("{place}: {e}"));
                continue;
            }
        };
        for s in &names.series {
            used.insert(s.clone());
            if !known_series(s) {
                problems.push(format!("{place}: series {s} is not exported"));
            }
        }
        for l in &names.labels {
            if !known_label(l) {
                problems.push(format!("{place}: label {l} is on no exported series"));
            }
        }
        for m in &names.metric_values {
            if !catalog.contains(m) {
                problems.push(format!(
                    "{place}: metric=\"{m}\" is no metric of the catalog"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "names the daemon does not export:\n{}\n\nexported: {:?}\nlabels: {:?}",
        problems.join("\n"),
        exports.series,
        exports.labels
    );
    // The check is not vacuous: the daemon's main families are used.
    for family in [
        "health_monitor_resource_status",
        "health_monitor_metric_value",
        "health_monitor_active_alerts",
        "health_monitor_writer_failing",
        "health_monitor_cycle_duration_seconds",
    ] {
        assert!(used.contains(family), "{family} is used nowhere");
    }
}
