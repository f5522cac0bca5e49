//! Binding the control socket safely: mode 0600 from the first moment, stale sockets replaced,
//! live ones never stolen.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{Context, bail};

/// Binds `path` with mode 0600. The socket is bound inside a fresh 0700 directory, narrowed to
/// 0600 and only then renamed into place, so no client can ever reach it with looser permissions.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    clear_stale(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = tempfile::Builder::new()
        .prefix(".hm-sock-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create the control socket in {}", parent.display()))?;
    let staging = private.path().join("s");
    let listener = UnixListener::bind(&staging)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o600))?;
    fs::rename(&staging, path)
        .with_context(|| format!("cannot put the control socket at {}", path.display()))?;
    Ok(listener)
}

/// Removes a socket nobody answers on. Refuses to touch a live socket or a non-socket file.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it (pass another --socket)",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "another health-monitor answers on {}; stop it first or pass another --socket",
            path.display()
        ),
        Err(_) => {
            tracing::info!(socket = %path.display(), "removing a stale control socket");
            fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_socket_is_0600_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hm.sock");
        let first = bind(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // A live socket is never stolen.
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("answers"), "{err}");
        drop(first);
        // Now it is stale: replaced.
        let _second = bind(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // No staging directories are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("hm.sock")]);
    }

    #[test]
    fn a_regular_file_in_the_way_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hm.sock");
        fs::write(&path, "precious").unwrap();
        assert!(
            bind(&path)
                .unwrap_err()
                .to_string()
                .contains("not a socket")
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }
}
