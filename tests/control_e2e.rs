//! The control socket under abuse: over-long lines, silent clients, a crowd, and sockets that
//! are stale or belong to someone else.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::{Env, wait_until};

const FAST: &str = "interval = 0.2\n";

fn ping(env: &Env) -> bool {
    let Ok(stream) = UnixStream::connect(&env.socket) else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if (&stream).write_all(b"{\"op\":\"ping\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).is_ok() && line.contains("\"ok\":true")
}

#[test]
fn a_line_over_4_mib_closes_the_connection_and_nothing_else() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let stream = UnixStream::connect(&env.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let long = vec![b'a'; 4 * 1024 * 1024 + 1024];
    // The server may hang up before taking all of it.
    let _ = (&stream).write_all(&long);
    let mut answer = String::new();
    let _ = (&stream).read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.contains("longer than 4194304 bytes"),
        "{answer}"
    );
    // The connection is closed: reading again gives end of file.
    let mut rest = [0u8; 16];
    assert_eq!((&stream).read(&mut rest).unwrap_or(0), 0);
    assert!(ping(&env));
    assert_eq!(env.status()["running"], true);
}

#[test]
fn a_silent_client_blocks_nobody_and_is_dropped() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let silent = UnixStream::connect(&env.socket).unwrap();
    let half = UnixStream::connect(&env.socket).unwrap();
    (&half).write_all(b"{\"op\":\"sta").unwrap();
    // Others are served at once while those two say nothing more.
    let started = Instant::now();
    for _ in 0..5 {
        assert!(ping(&env));
        env.status();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Both are hung up on after the idle timeout.
    for mut stream in [&silent, &half] {
        stream
            .set_read_timeout(Some(Duration::from_secs(25)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).unwrap(), 0, "the daemon closes it");
    }
}

#[test]
fn a_hundred_concurrent_clients_are_all_answered() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let socket = env.socket.clone();
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let stream = UnixStream::connect(&socket).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let request = if i % 2 == 0 { "status" } else { "list" };
                (&stream)
                    .write_all(format!("{{\"op\":\"{request}\"}}\n").as_bytes())
                    .unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
                answer["ok"] == true
            })
        })
        .collect();
    let answered = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(answered, 100);
    assert!(ping(&env));
}

#[test]
fn a_live_socket_that_is_not_ours_is_never_stolen() {
    let env = Env::new(FAST);
    let other = UnixListener::bind(&env.socket).unwrap();
    let out = env.hm(&["start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("answers on"), "{err}");
    // Still theirs: a client reaches the other listener.
    let _client = UnixStream::connect(&env.socket).unwrap();
    other.set_nonblocking(true).unwrap();
    wait_until("the other listener to see the client", || {
        other.accept().is_ok()
    });
}

#[test]
fn a_stale_socket_is_replaced() {
    let env = Env::new(FAST);
    drop(UnixListener::bind(&env.socket).unwrap());
    assert!(env.socket.exists());
    let _daemon = env.start(&[]);
    assert!(ping(&env));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&env.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
