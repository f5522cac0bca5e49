//! Reading the small files a probe is pointed at (pid files, heartbeats) without ever blocking.

use std::path::Path;

/// Files read by a probe (pid files, heartbeats) are small: more than this is not read.
pub(super) const SMALL_FILE: u64 = 64 * 1024;

/// Reads a small regular file. `Ok(None)` for something that is not a regular file or is too
/// big (a FIFO would block the read for ever); `Err` when it is not there.
pub fn read_small_file(path: &Path) -> std::io::Result<Option<String>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() || meta.len() > SMALL_FILE {
        return Ok(None);
    }
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    match std::io::Read::read_to_string(&mut std::io::Read::take(file, SMALL_FILE), &mut text) {
        Ok(_) => Ok(Some(text)),
        Err(_) => Ok(None),
    }
}
