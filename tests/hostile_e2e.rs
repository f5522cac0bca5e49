//! Hostile workspaces: one that vanishes, one that cannot be read, a symlink loop, a million
//! files. No hang, no crash, and a metric or alert that says what happened.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use common::{Env, Tmpfs, wait_until};

fn latest(env: &Env, id: &str, metric: &str) -> Option<f64> {
    env.latest("workspace", id, metric)
}

fn active_alert(env: &Env, id: &str, alert_type: &str) -> bool {
    env.alert_active(id, alert_type)
}

fn add(env: &Env, id: &str) {
    env.hm_ok(&[
        "add",
        "workspace",
        id,
        "--path",
        &env.path(id).display().to_string(),
    ]);
}

#[test]
fn a_vanishing_workspace_raises_a_critical_alert_and_comes_back() {
    let env = Env::new("interval = 0.1\n");
    fs::create_dir(env.path("w1")).unwrap();
    fs::write(env.path("w1/f"), b"data").unwrap();
    let mut daemon = env.start(&[]);
    add(&env, "w1");
    wait_until("w1 measured", || {
        latest(&env, "w1", "workspace_exists") == Some(1.0)
    });
    fs::remove_dir_all(env.path("w1")).unwrap();
    wait_until("the vanished workspace alert", || {
        active_alert(&env, "w1", "workspace_exists")
    });
    fs::create_dir(env.path("w1")).unwrap();
    wait_until("the alert to resolve when it returns", || {
        !active_alert(&env, "w1", "workspace_exists")
    });
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0);
}

#[test]
fn an_unreadable_workspace_is_reported_as_such() {
    let env = Env::new("interval = 0.1\n");
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        // Root reads everything: run the daemon as nobody, in a place nobody may write.
        fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(&env.config, fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::create_dir(env.path("locked")).unwrap();
    fs::write(env.path("locked/secret"), b"x").unwrap();
    fs::set_permissions(env.path("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let _daemon = env.start_with(&[], &[], |cmd| {
        use std::os::unix::process::CommandExt;
        if root {
            cmd.uid(65534).gid(65534);
        }
    });
    add(&env, "locked");
    wait_until("the unreadable workspace alert", || {
        active_alert(&env, "locked", "workspace_readable")
    });
    assert_eq!(latest(&env, "locked", "workspace_exists"), Some(1.0));
    assert_eq!(latest(&env, "locked", "workspace_readable"), Some(0.0));
    assert_eq!(env.status()["running"], true);
    fs::set_permissions(env.path("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    wait_until("readable again", || {
        !active_alert(&env, "locked", "workspace_readable")
    });
}

#[test]
fn symlink_loops_are_not_followed() {
    let env = Env::new("interval = 0.1\n");
    let ws = env.path("loopy");
    fs::create_dir_all(ws.join("sub")).unwrap();
    fs::write(ws.join("sub/f"), vec![0u8; 1000]).unwrap();
    symlink(&ws, ws.join("sub/loop")).unwrap();
    symlink("..", ws.join("sub/up")).unwrap();
    symlink("/", ws.join("root")).unwrap();
    let _daemon = env.start(&[]);
    add(&env, "loopy");
    wait_until("a complete walk of the loopy workspace", || {
        latest(&env, "loopy", "workspace_file_count").is_some()
    });
    assert_eq!(latest(&env, "loopy", "workspace_file_count"), Some(4.0));
    assert_eq!(latest(&env, "loopy", "workspace_scan_complete"), Some(1.0));
    assert!(latest(&env, "loopy", "workspace_size_mb").unwrap() < 0.01);
}

#[test]
fn a_million_files_hit_the_walk_cap_without_hanging_anything() {
    let env = Env::new("interval = 0.2\nwalk_time_cap = 0.3\n");
    // A million files take seconds on a tmpfs and minutes on a busy disk.
    let mount = env.path("mnt");
    fs::create_dir(&mount).unwrap();
    let tmpfs = Tmpfs::mount(&mount, "2g");
    if tmpfs.is_none() {
        eprintln!("no tmpfs here: making a million files on the disk, which is slow");
    }
    let ws = mount.join("huge");
    fs::create_dir(&ws).unwrap();
    for i in 0..10 {
        fs::write(ws.join(format!("seed{i}")), b"0123456789").unwrap();
    }
    let mut daemon = env.start(&[]);
    env.hm_ok(&[
        "add",
        "workspace",
        "huge",
        "--path",
        &ws.display().to_string(),
    ]);
    wait_until("the first complete walk", || {
        latest(&env, "huge", "workspace_file_count") == Some(10.0)
    });
    let size_before = latest(&env, "huge", "workspace_size_mb").unwrap();
    // A million more files, made by two threads.
    std::thread::scope(|s| {
        for t in 0..2 {
            let ws = &ws;
            s.spawn(move || {
                for d in (t..1000).step_by(2) {
                    let dir = ws.join(format!("d{d}"));
                    fs::create_dir(&dir).unwrap();
                    for f in 0..1000 {
                        fs::File::create(dir.join(format!("f{f}"))).unwrap();
                    }
                }
            });
        }
    });
    wait_until("the walk cap to be reported", || {
        active_alert(&env, "huge", "workspace_scan_complete")
    });
    // The last complete values are kept (a walk may have finished while the files were being
    // made, never since), and everything else goes on.
    let kept_count = latest(&env, "huge", "workspace_file_count").unwrap();
    let kept_size = latest(&env, "huge", "workspace_size_mb").unwrap();
    assert!((10.0..1_000_010.0).contains(&kept_count), "{kept_count}");
    assert!(kept_size >= size_before);
    let cpu_rows =
        env.count("SELECT count(*) FROM health_metrics WHERE metric_name='cpu_usage_percent'");
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE metric_name='cpu_usage_percent'",
        cpu_rows + 10,
    );
    assert_eq!(
        latest(&env, "huge", "workspace_file_count"),
        Some(kept_count)
    );
    assert_eq!(latest(&env, "huge", "workspace_size_mb"), Some(kept_size));
    assert_eq!(latest(&env, "huge", "workspace_scan_complete"), Some(0.0));
    assert_eq!(env.status()["running"], true);
    assert!(daemon.log().contains("hit its time cap"));
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0);
    // Emptying the tmpfs is instant; the temporary directory then has nothing big to delete.
    drop(tmpfs);
}
