//! The Debian package, built as the README says (man page and completions generated into
//! `target/deb-assets/`, `cargo deb --no-build`; from the binary under test rather than a
//! release build, see `build_package`) and checked for real: its
//! control data, every file the unit needs where the unit looks for it, the extracted binary
//! and default config, the maintainer scripts, and — as root on a machine where that touches
//! nobody's installation — `dpkg -i`, the system user and state directory, then `dpkg --purge`.
//!
//! cargo-deb is required (`.ci/run` installs it): where it is missing these tests fail and say
//! how to install it (they do not skip).

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const PACKAGE: &str = "health-monitor";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CONFIG: &str = "/etc/health-monitor/config.toml";
const STATE_DIR: &str = "/var/lib/health-monitor";
const UNIT: &str = "health-monitor.service";
/// Where packages put units (`systemd-analyze unit-paths`, less /etc and /run).
const UNIT_DIRS: [&str; 2] = ["usr/lib/systemd/system", "lib/systemd/system"];

/// Runs `cmd` to completion, stdin closed.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

/// Runs `cmd`, which must succeed; returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The cargo that runs these tests.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(ROOT);
    cmd
}

/// The target directory the binary under test was built in (`CARGO_TARGET_DIR` or `target`).
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_health-monitor"));
    bin.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The `.deb`, built once for all the tests here; `Err` says why it could not be.
fn package() -> &'static Path {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DEB.get_or_init(build_package) {
        Ok(path) => path,
        Err(why) => panic!("{why}"),
    }
}

/// The README's commands, but on the binary under test rather than a release build: a cold
/// release build (fat LTO) takes 5 to 8 minutes on a CI machine of two cores, and what is
/// tested here is the package, not the optimizer. The binary is put where `cargo deb` looks
/// for the release one (`<target>/release/`, remapped by `CARGO_TARGET_DIR`), then `man` and
/// `completions` into `target/deb-assets/`, then `cargo deb --no-build`.
fn build_package() -> Result<PathBuf, String> {
    let version = cargo().args(["deb", "--version"]).output();
    if !version.is_ok_and(|o| o.status.success()) {
        return Err(
            "cargo-deb is not installed: `cargo install cargo-deb --locked` \
                    (.ci/run installs it when `cargo deb --version` fails)"
                .into(),
        );
    }
    let target = target_dir().join("package-e2e").join("target");
    let release = target.join("release").join(PACKAGE);
    fs::create_dir_all(release.parent().unwrap()).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_health-monitor"), &release).unwrap();
    // cargo-deb reads these from the source tree: target/deb-assets is not remapped.
    let assets = Path::new(ROOT).join("target/deb-assets");
    fs::create_dir_all(&assets).unwrap();
    for (args, file) in [
        (&["man"][..], "health-monitor.1"),
        (&["completions", "bash"][..], "health-monitor.bash"),
        (&["completions", "zsh"][..], "_health-monitor"),
        (&["completions", "fish"][..], "health-monitor.fish"),
    ] {
        let out = run_ok(Command::new(&release).args(args));
        assert!(!out.is_empty(), "health-monitor {args:?} printed nothing");
        fs::write(assets.join(file), out).unwrap();
    }
    let out_dir = target.join("package-e2e");
    fs::create_dir_all(&out_dir).unwrap();
    let deb = out_dir.join(format!("{PACKAGE}.deb"));
    let made = run(cargo()
        .args(["deb", "--no-build", "--output"])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", &target));
    if !made.status.success() {
        return Err(format!(
            "cargo deb --no-build failed:\n{}\n{}",
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    assert!(deb.is_file(), "cargo deb made no {}", deb.display());
    Ok(deb)
}

/// A field of the package's control file.
fn control_field(deb: &Path, field: &str) -> String {
    run_ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field))
        .trim()
        .to_string()
}

/// The package's control files (`conffiles`, `postinst`...) in a temporary directory.
fn control_files(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(dir.path()),
    );
    dir
}

/// The package's files unpacked under a temporary root.
fn extracted(deb: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()));
    root
}

/// `path` (absolute, as installed) inside the unpacked `root`.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The value of the unit's `key=` line (the only one).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    let values: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(values.len(), 1, "one {key}= line in the unit: {values:?}");
    values[0]
}

/// A setting as `config check` prints it: the rest of the line after its name.
fn setting<'a>(checked: &'a str, name: &str) -> &'a str {
    checked
        .lines()
        .find_map(|l| {
            let rest = l.trim_start().strip_prefix(name)?;
            rest.starts_with(' ').then(|| rest.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{checked}"))
}

/// The installed unit's path relative to the root, and its text.
fn unit_in(root: &Path) -> (String, String) {
    let found: Vec<String> = UNIT_DIRS
        .iter()
        .map(|dir| format!("{dir}/{UNIT}"))
        .filter(|rel| root.join(rel).is_file())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the unit in one of {UNIT_DIRS:?}: {found:?}"
    );
    let text = fs::read_to_string(root.join(&found[0])).unwrap();
    (found[0].clone(), text)
}

/// `systemd-analyze verify` of `unit`: its own complaints (without systemd as PID 1 verify may
/// grumble about the bus; the unit's lines must not). `None` where systemd-analyze is missing.
fn unit_problems(unit: &Path) -> Option<Vec<String>> {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()?;
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    Some(
        stderr
            .lines()
            .filter(|l| l.contains(UNIT))
            .map(String::from)
            .collect(),
    )
}

#[test]
fn the_control_data_names_the_package_its_version_dependencies_and_conffile() {
    let deb = package();
    let info = run_ok(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(info.contains(&format!("Package: {PACKAGE}")), "{info}");
    assert_eq!(control_field(deb, "Package"), PACKAGE);
    // cargo-deb's revision 1 after Cargo.toml's version.
    assert_eq!(
        control_field(deb, "Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    let depends = control_field(deb, "Depends");
    // $auto: the C library the binary links (SQLite is bundled); the postinst runs adduser.
    assert!(depends.contains("libc6"), "{depends}");
    assert!(depends.contains("adduser"), "{depends}");
    assert_eq!(control_field(deb, "Section"), "admin");
    assert_eq!(control_field(deb, "Priority"), "optional");
    assert!(!control_field(deb, "Maintainer").is_empty());
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(control_field(deb, "Architecture"), arch.trim());

    let control = control_files(deb);
    let conffiles = fs::read_to_string(control.path().join("conffiles")).unwrap();
    let conffiles: Vec<&str> = conffiles.lines().collect();
    assert_eq!(conffiles, [CONFIG], "only the config is a conffile");
}

#[test]
fn every_file_the_unit_needs_is_where_the_unit_looks_for_it() {
    let deb = package();
    let listing = run_ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "owned by root: {line}");
    }
    let root = extracted(deb);
    let root = root.path();

    let bin = inside(root, "/usr/bin/health-monitor");
    assert!(is_executable(&bin), "{} is executable", bin.display());
    let mode = fs::metadata(&bin).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "{mode:o}");

    // The unit, in a directory systemd reads units from.
    let (unit_rel, unit) = unit_in(root);
    let unit_dir = format!("/{}", Path::new(&unit_rel).parent().unwrap().display());
    if let Ok(out) = Command::new("systemd-analyze").arg("unit-paths").output() {
        let paths = String::from_utf8_lossy(&out.stdout);
        assert!(
            paths.lines().any(|p| p == unit_dir),
            "{unit_dir} is not among systemd's unit paths:\n{paths}"
        );
    }
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    assert_eq!(unit_value(&unit, "User"), "health-monitor");
    assert_eq!(unit_value(&unit, "Group"), "health-monitor");
    assert_eq!(unit_value(&unit, "StateDirectory"), "health-monitor");
    assert_eq!(unit_value(&unit, "WorkingDirectory"), STATE_DIR);
    assert_eq!(unit_value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(
        unit_value(&unit, "ExecStart"),
        format!("/usr/bin/health-monitor start --config {CONFIG}")
    );
    // ExecStart's program and its --config file are in the package.
    let exec: Vec<&str> = unit_value(&unit, "ExecStart").split_whitespace().collect();
    assert!(is_executable(&inside(root, exec[0])), "{}", exec[0]);
    let config_at = exec.iter().position(|a| *a == "--config").unwrap() + 1;
    let config = inside(root, exec[config_at]);
    assert!(config.is_file(), "{}", config.display());

    // The default config is valid, for the extracted binary too, and keeps the database in
    // the unit's StateDirectory; so is every setting it shows commented out ("#key").
    let version = run_ok(Command::new(&bin).arg("--version"));
    assert!(
        version.starts_with(&format!("health-monitor {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let checked = run_ok(Command::new(&bin).args(["config", "check"]).arg(&config));
    assert_eq!(
        setting(&checked, "db_path"),
        format!("{STATE_DIR}/health_monitor.db")
    );
    assert_eq!(setting(&checked, "interval"), "30 s");
    assert_eq!(setting(&checked, "http"), "off");
    let text = fs::read_to_string(&config).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    for shown in ["[http]", "[thresholds.", "[[check]]"] {
        assert!(uncommented.contains(shown), "the config shows {shown}");
    }
    let all = tempfile::NamedTempFile::new().unwrap();
    fs::write(all.path(), &uncommented).unwrap();
    let checked = run_ok(Command::new(&bin).args(["config", "check"]).arg(all.path()));
    assert!(
        setting(&checked, "http").starts_with("127.0.0.1:"),
        "{checked}"
    );
    assert_eq!(setting(&checked, "checks"), "1");

    // The man page (gzipped, as Debian wants) and the completions.
    let man = inside(root, "/usr/share/man/man1/health-monitor.1.gz");
    let roff = run_ok(Command::new("gzip").arg("-dc").arg(&man));
    assert!(roff.contains(".TH health-monitor 1"), "{roff}");
    let bash = inside(
        root,
        "/usr/share/bash-completion/completions/health-monitor",
    );
    run_ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(fs::read_to_string(&bash).unwrap().contains("complete -F"));
    let zsh = inside(root, "/usr/share/zsh/vendor-completions/_health-monitor");
    assert!(
        fs::read_to_string(&zsh)
            .unwrap()
            .starts_with("#compdef health-monitor")
    );
    let fish = inside(
        root,
        "/usr/share/fish/vendor_completions.d/health-monitor.fish",
    );
    assert!(
        fs::read_to_string(&fish)
            .unwrap()
            .contains("complete -c health-monitor")
    );
    for (shell, file) in [("zsh", &zsh), ("fish", &fish)] {
        if Command::new(shell).arg("--version").output().is_ok() {
            run_ok(Command::new(shell).arg("-n").arg(file));
        }
    }
    assert!(inside(root, "/usr/share/doc/health-monitor/copyright").is_file());
    assert!(inside(root, "/usr/share/doc/health-monitor/README.md").is_file());

    // The unit as packaged verifies, its ExecStart pointed into the unpacked tree.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join(UNIT);
    let unit = unit.replace("/usr/bin/health-monitor", bin.to_str().unwrap());
    fs::write(&local, unit).unwrap();
    match unit_problems(&local) {
        Some(problems) => assert!(problems.is_empty(), "{problems:?}"),
        None => eprintln!("note: systemd-analyze is not installed; the unit was not verified"),
    }
}

#[test]
fn the_maintainer_scripts_are_shell_and_make_the_user_before_starting_the_unit() {
    let control = control_files(package());
    let script = |name: &str| fs::read_to_string(control.path().join(name)).ok();
    for name in ["preinst", "postinst", "prerm", "postrm"] {
        let Some(text) = script(name) else { continue };
        let path = control.path().join(name);
        assert!(is_executable(&path), "{name} is executable");
        assert!(text.starts_with("#!/bin/sh\n"), "{name}: {text}");
        assert!(text.contains("set -e"), "{name}: {text}");
        assert!(!text.contains("#DEBHELPER#"), "{name}: {text}");
        run_ok(Command::new("sh").arg("-n").arg(&path));
        if Command::new("bash").arg("--version").output().is_ok() {
            // sh is dash on Debian; bash --posix catches what dash would also reject.
            run_ok(Command::new("bash").args(["--posix", "-n"]).arg(&path));
        }
    }
    let postinst = script("postinst").unwrap();
    let user = postinst
        .find("adduser --system")
        .expect("postinst adds the user");
    let state = postinst
        .find("install -d")
        .expect("and the state directory");
    let enable = postinst
        .find("deb-systemd-helper enable")
        .expect("enables the unit");
    let start = postinst
        .find("deb-systemd-invoke")
        .expect("starts the unit");
    assert!(
        user < state && state < enable && enable < start,
        "{postinst}"
    );
    assert!(
        postinst.contains("getent passwd health-monitor"),
        "idempotent: {postinst}"
    );
    let prerm = script("prerm").unwrap();
    assert!(prerm.contains("deb-systemd-invoke stop"), "{prerm}");
    let postrm = script("postrm").unwrap();
    assert!(postrm.contains("deb-systemd-helper purge"), "{postrm}");
    assert!(
        postrm.contains(&format!("rm -rf {STATE_DIR}")),
        "purge removes the state: {postrm}"
    );
}

/// `dpkg-query`'s status of the package: `not-installed` when dpkg does not know it.
fn dpkg_status() -> String {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", PACKAGE]));
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if status.is_empty() {
        "not-installed".into()
    } else {
        status
    }
}

/// `getent passwd|group NAME` split on `:`; `None` when there is no such entry.
fn getent(db: &str, name: &str) -> Option<Vec<String>> {
    let out = run(Command::new("getent").args([db, name]));
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(String::from)
            .collect()
    })
}

/// Why installing the package here would touch something that is not the test's, if it would.
fn why_not_install() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if Path::new("/run/systemd/system").exists() {
        // The postinst would enable and start a real service on a booted machine.
        return Some("systemd runs this machine (the postinst would start the daemon)".into());
    }
    let status = dpkg_status();
    if status != "not-installed" {
        return Some(format!("{PACKAGE} is already {status} here"));
    }
    ["/usr/bin/health-monitor", "/etc/health-monitor", STATE_DIR]
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| format!("{p} exists (someone's installation: dpkg would overwrite it)"))
}

/// Purges the package on drop, and the user and group when the test made them.
struct Installed {
    user_was_there: bool,
    group_was_there: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").args(["--purge", PACKAGE]));
        if !self.user_was_there {
            let _ = run(Command::new("userdel").arg(PACKAGE));
        }
        if !self.group_was_there && getent("group", PACKAGE).is_some() {
            let _ = run(Command::new("groupdel").arg(PACKAGE));
        }
    }
}

fn dpkg_install(deb: &Path) -> String {
    run_ok(
        Command::new("dpkg")
            .arg("--install")
            .arg(deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[test]
fn installing_makes_the_user_and_its_state_directory_and_purging_removes_them() {
    let deb = package();
    if let Some(why) = why_not_install() {
        eprintln!("note: not installing the package ({why}); the unpacked checks still ran");
        return;
    }
    let guard = Installed {
        user_was_there: getent("passwd", PACKAGE).is_some(),
        group_was_there: getent("group", PACKAGE).is_some(),
    };
    dpkg_install(deb);
    assert_eq!(dpkg_status(), "installed");

    // A system user (below the first login uid), no login, home at the state directory.
    let user = getent("passwd", PACKAGE).expect("the postinst adds the user");
    let uid: u32 = user[2].parse().unwrap();
    let gid: u32 = user[3].parse().unwrap();
    assert!(uid < 1000, "a system uid: {user:?}");
    assert_eq!(user[5], STATE_DIR, "{user:?}");
    assert!(
        user[6].ends_with("nologin") || user[6] == "/bin/false",
        "{user:?}"
    );
    let group = getent("group", PACKAGE).expect("and its group");
    assert_eq!(
        group[2].parse::<u32>().unwrap(),
        gid,
        "its primary group: {group:?}"
    );
    let state = fs::metadata(STATE_DIR).unwrap();
    assert!(state.is_dir());
    assert_eq!(
        (state.uid(), state.gid()),
        (uid, gid),
        "{STATE_DIR} is the user's"
    );
    assert_eq!(state.mode() & 0o7777, 0o700);

    // Enabled (deb-systemd-helper links it even without systemd running), and verifies as
    // installed, the user now existing.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants").join(UNIT);
    assert!(
        wants.symlink_metadata().is_ok(),
        "{} links the unit",
        wants.display()
    );
    let listed = run_ok(Command::new("dpkg").args(["--listfiles", PACKAGE]));
    let unit = UNIT_DIRS
        .iter()
        .map(|d| format!("/{d}/{UNIT}"))
        .find(|u| listed.lines().any(|l| l == u))
        .unwrap_or_else(|| panic!("no unit in:\n{listed}"));
    match unit_problems(Path::new(&unit)) {
        Some(problems) => assert!(problems.is_empty(), "{problems:?}"),
        None => eprintln!("note: systemd-analyze is not installed; the unit was not verified"),
    }

    // What the unit runs, as the unit runs it: the user, in the state directory, one cycle.
    run_ok(Command::new("/usr/bin/health-monitor").args(["config", "check", CONFIG]));
    run_ok(
        Command::new("runuser")
            .args([
                "-u",
                PACKAGE,
                "--",
                "/usr/bin/health-monitor",
                "start",
                "--config",
                CONFIG,
            ])
            .arg("--once")
            .current_dir(STATE_DIR),
    );
    let db = fs::metadata(format!("{STATE_DIR}/health_monitor.db")).unwrap();
    assert_eq!(db.uid(), uid, "the daemon's database is its user's");

    // Installing again (dpkg's upgrade path, stdin closed: no prompt) keeps the user, its uid,
    // the database and, a conffile, the admin's edit of the config.
    let edited = format!("{}\ninterval = 10\n", fs::read_to_string(CONFIG).unwrap());
    let edited = edited.replace("\ninterval = 30\n", "\n");
    fs::write(CONFIG, &edited).unwrap();
    dpkg_install(deb);
    assert_eq!(getent("passwd", PACKAGE).unwrap()[2], uid.to_string());
    assert!(Path::new(&format!("{STATE_DIR}/health_monitor.db")).exists());
    assert_eq!(
        fs::read_to_string(CONFIG).unwrap(),
        edited,
        "the edit is kept"
    );
    let checked = run_ok(Command::new("/usr/bin/health-monitor").args(["config", "check", CONFIG]));
    assert_eq!(setting(&checked, "interval"), "10 s");

    // Purge: the files, the conffile, the state and the unit's links go; the user stays.
    run_ok(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert_eq!(dpkg_status(), "not-installed");
    for gone in [
        "/usr/bin/health-monitor",
        CONFIG,
        "/etc/health-monitor",
        STATE_DIR,
        &unit,
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    assert!(
        wants.symlink_metadata().is_err(),
        "{} is left",
        wants.display()
    );
    assert!(getent("passwd", PACKAGE).is_some(), "system users stay");
    drop(guard);
}
