//! Test harness: runs the real binary on a temporary database and socket, and reads what it wrote.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_health-monitor")
}

/// Polls `cond` until it holds or [`DEADLINE`] passes; panics with `what` on timeout.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary place with a database, a socket, a config file and directories to watch.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl Env {
    /// A fresh environment whose config holds `config` (TOML).
    pub fn new(config: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hm.db");
        let socket = dir.path().join("hm.sock");
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, config).unwrap();
        Env {
            dir,
            db,
            socket,
            config: config_path,
        }
    }

    /// An environment whose database lives on a fresh tmpfs of `size` (e.g. `"3m"`), its socket
    /// outside it; `None` (said on stderr) where mounting is not permitted. Keep the `Tmpfs`
    /// after the `Env` in the binding, so it is unmounted before the directory goes.
    pub fn on_tmpfs(config: &str, size: &str) -> Option<(Env, Tmpfs)> {
        let mut env = Env::new(config);
        let tiny = env.path("tiny");
        fs::create_dir(&tiny).unwrap();
        let Some(tmpfs) = Tmpfs::mount(&tiny, size) else {
            eprintln!("skipping: cannot mount a tmpfs here");
            return None;
        };
        env.db = tiny.join("hm.db");
        env.socket = env.path("tiny.sock");
        Some((env, tmpfs))
    }

    /// Stops the daemon (exit 0) and checks that none of its rows was dropped and every
    /// measurement it accepted is a row of the database, beside the `rows_before` it started with.
    pub fn stop_and_count(&self, daemon: &mut Daemon, rows_before: u64) {
        self.hm_ok(&["stop"]);
        assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
        let accepted = daemon.logged_number("measurements_accepted").unwrap();
        assert_eq!(daemon.logged_number("rows_dropped"), Some(0));
        assert_eq!(
            self.count("SELECT count(*) FROM health_metrics") as u64,
            rows_before + accepted,
            "every accepted measurement is a row of the database at the path"
        );
    }

    /// A path inside the environment.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The global flags pointing at this environment.
    pub fn globals(&self) -> Vec<String> {
        vec![
            "--db-path".into(),
            self.db.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ]
    }

    /// Runs a CLI command to completion.
    pub fn hm(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .args(self.globals())
            .output()
            .unwrap()
    }

    /// Runs a CLI command with `input` on its standard input (`report --stdin`).
    pub fn hm_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin())
            .args(args)
            .args(self.globals())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn hm_ok(&self, args: &[&str]) -> String {
        let out = self.hm(args);
        assert!(
            out.status.success(),
            "health-monitor {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.hm_ok(&["status", "--json"])).unwrap()
    }

    /// `status --json`, or `None` when the command failed (e.g. the control server restarting).
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let out = self.hm(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The `actors` entry of the live status named `name`.
    pub fn actor(status: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
        status["actors"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
    }

    /// Starts the daemon with extra `start` arguments and waits until its socket answers.
    pub fn start(&self, args: &[&str]) -> Daemon {
        self.start_with(args, &[], |_| {})
    }

    /// Starts the daemon with environment variables (e.g. `HEALTH_MONITOR_FAULTS`).
    pub fn start_with_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        self.start_with(args, envs, |_| {})
    }

    /// The command that starts the daemon, for tests that need to shape it further.
    pub fn start_command(&self, args: &[&str]) -> (Command, PathBuf) {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = self.path(&format!(
            "daemon-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new(bin());
        cmd.arg("start")
            .args(args)
            .args(self.globals())
            .args(["--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        (cmd, log)
    }

    /// Starts the daemon, letting `shape` adjust the command (user, limits...).
    pub fn start_with(
        &self,
        args: &[&str],
        envs: &[(&str, &str)],
        shape: impl FnOnce(&mut Command),
    ) -> Daemon {
        let (mut cmd, log) = self.start_command(args);
        cmd.envs(envs.iter().copied());
        shape(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut daemon = Daemon { child, log };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("daemon exited early ({status}):\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon never answered:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A read-only connection to the database.
    pub fn db(&self) -> Connection {
        let conn = Connection::open_with_flags(&self.db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    /// A writable connection, for tests that plant rows.
    pub fn db_write(&self) -> Connection {
        let conn = Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    /// One integer from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// The newest value of a metric of a resource.
    pub fn latest(&self, resource_type: &str, id: &str, metric: &str) -> Option<f64> {
        self.db()
            .query_row(
                "SELECT value FROM health_metrics WHERE resource_type = ?1 AND resource_id = ?2
                 AND metric_name = ?3 ORDER BY id DESC LIMIT 1",
                [resource_type, id, metric],
                |r| r.get(0),
            )
            .ok()
    }

    /// True when the resource `id` has an active alert of this type.
    pub fn alert_active(&self, id: &str, alert_type: &str) -> bool {
        self.db()
            .query_row(
                "SELECT count(*) FROM health_alerts WHERE resource_id = ?1 AND alert_type = ?2
                 AND resolved = 0",
                [id, alert_type],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    }

    /// Waits until the query returns at least `n`.
    pub fn wait_count(&self, sql: &str, n: i64) {
        wait_until(&format!("{sql} >= {n}"), || self.count(sql) >= n);
    }
}

/// A running daemon; killed on drop if the test did not stop it.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// A `key=value` number from the daemon's log (the last one logged).
    pub fn logged_number(&self, key: &str) -> Option<u64> {
        let log = self.log();
        let needle = format!("{key}=");
        let at = log.rfind(&needle)? + needle.len();
        let digits: String = log[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `sleep` process to stand in for an agent; killed on drop.
pub struct FakeAgent(pub Child);

impl FakeAgent {
    pub fn spawn() -> FakeAgent {
        FakeAgent(Command::new("sleep").arg("600").spawn().unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a file of `bytes` zero bytes.
pub fn write_file(path: &Path, bytes: usize) {
    fs::write(path, vec![0u8; bytes]).unwrap();
}

/// A tmpfs mounted for one test, unmounted when dropped. `None` where mounting is not permitted.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"3m"`) at `at`, which must exist.
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},nr_inodes=2m"),
                "tmpfs",
            ])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
