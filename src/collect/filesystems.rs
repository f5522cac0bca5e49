//! Filesystems: which are real (from `/proc/self/mountinfo`), and how full and writable each is.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::sys::statvfs::{FsFlags, statvfs};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mount {
    /// Where it is mounted (field 5, escapes undone).
    pub mount_point: PathBuf,
    /// `major:minor` of the device.
    pub device: String,
    /// The filesystem type, e.g. `ext4`, `tmpfs`, `squashfs`.
    pub fstype: String,
    /// What is mounted: a device such as `/dev/vda1`, a server share, or a name (`tmpfs`).
    pub source: String,
    /// Mounted read-only (per-mount or superblock option `ro`).
    pub read_only: bool,
}

/// Undoes mountinfo's octal escapes (`\040` is a space), byte for byte: mount points need
/// not be UTF-8.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let octal = s.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok())
                .flatten()
        });
        match (s[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Parses `/proc/self/mountinfo` (raw bytes); malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &[u8]) -> Vec<Mount> {
    use std::os::unix::ffi::OsStringExt;
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let sep = line.windows(3).position(|w| w == b" - ")?;
            let (left, right) = (&line[..sep], &line[sep + 3..]);
            let fields = |part: &[u8]| -> Vec<Vec<u8>> {
                part.split(|b| *b == b' ')
                    .filter(|f| !f.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect()
            };
            let (l, r) = (fields(left), fields(right));
            let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
            let has_ro = |opts: &Vec<u8>| opts.split(|b| *b == b',').any(|o| o == b"ro");
            Some(Mount {
                device: text(l.get(2)?),
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(l.get(4)?))),
                read_only: has_ro(l.get(5)?) || r.get(2).is_some_and(has_ro),
                fstype: text(r.first()?),
                source: r.get(1).map_or(String::new(), |s| {
                    String::from_utf8_lossy(&unescape(s)).into_owned()
                }),
            })
        })
        .collect()
}

/// Filesystem types that hold data (block-device or network backed), as opposed to `proc`,
/// `tmpfs`, `cgroup` and the like.
const REAL_TYPES: &[&str] = &[
    "ext2",
    "ext3",
    "ext4",
    "xfs",
    "btrfs",
    "zfs",
    "f2fs",
    "vfat",
    "exfat",
    "ntfs",
    "ntfs3",
    "fuseblk",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "ceph",
    "glusterfs",
];

/// Read-only images (snap packages, ISOs): always full and read-only by design.
const IMAGE_TYPES: &[&str] = &["squashfs", "iso9660", "erofs", "cramfs", "udf"];

/// The real filesystems: data-holding types or block devices (not read-only images), plus `/`
/// whatever it is; one mount point per device (the shortest), so bind mounts count once.
pub(crate) fn real_filesystems(mounts: &[Mount]) -> Vec<Mount> {
    let mut picked: Vec<Mount> = mounts
        .iter()
        .filter(|m| {
            m.mount_point == Path::new("/")
                || (!IMAGE_TYPES.contains(&m.fstype.as_str())
                    && (REAL_TYPES.contains(&m.fstype.as_str()) || m.source.starts_with("/dev/")))
        })
        .cloned()
        .collect();
    picked.sort_by_key(|m| m.mount_point.as_os_str().len());
    let mut seen = HashSet::new();
    picked.retain(|m| seen.insert(m.device.clone()));
    picked.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    picked
}

/// Usage of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FsUsage {
    /// As `df` computes it: used / (used + available to unprivileged users).
    pub disk_percent: f64,
    /// `None` where the filesystem has no inode limit.
    pub inode_percent: Option<f64>,
    /// Mounted read-only (`ST_RDONLY` from statvfs).
    pub read_only: bool,
}

/// statvfs of the filesystem holding `path`.
pub fn usage(path: &Path) -> nix::Result<FsUsage> {
    let st = statvfs(path)?;
    let frsize = st.fragment_size() as f64;
    let used = (st.blocks() as f64 - st.blocks_free() as f64) * frsize;
    let avail = st.blocks_available() as f64 * frsize;
    let disk_percent = if used + avail > 0.0 {
        used / (used + avail) * 100.0
    } else {
        0.0
    };
    let files = st.files() as f64;
    let inode_percent = (files > 0.0).then(|| (files - st.files_free() as f64) / files * 100.0);
    Ok(FsUsage {
        disk_percent,
        inode_percent,
        read_only: st.flags().contains(FsFlags::ST_RDONLY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 252:0 / / rw,relatime - ext4 /dev/vda rw,discard
23 22 0:5 / /proc rw,relatime - proc proc rw
24 22 0:40 / /mnt/my\\040data rw - ext4 /dev/vdb1 rw
25 22 252:0 /srv /srv/bind rw - ext4 /dev/vda rw
26 22 0:50 / /data ro,relatime - xfs /dev/vdc ro
27 22 0:51 / /scratch rw - tmpfs tmpfs rw
28 22 7:3 / /snap/core/1 ro - squashfs /dev/loop3 ro
garbage line
29 22 0:60 / /mnt/caf\xc3\xa9 rw - ext4 /dev/vde rw
30 22 0:61 / /mnt/raw\xff rw - ext4 /dev/vdf rw
";

    #[test]
    fn mountinfo_parses_with_escapes_and_read_only_flags() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 9);
        assert_eq!(mounts[7].mount_point, PathBuf::from("/mnt/caf\u{e9}"));
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            mounts[8].mount_point.as_os_str().as_bytes(),
            b"/mnt/raw\xff"
        );
        assert_eq!(mounts[2].mount_point, PathBuf::from("/mnt/my data"));
        assert!(mounts[4].read_only);
        assert!(!mounts[0].read_only);
    }

    #[test]
    fn real_filesystems_skip_pseudo_ones_and_bind_mounts() {
        let real = real_filesystems(&parse_mountinfo(SAMPLE));
        let points: Vec<_> = real
            .iter()
            .map(|m| m.mount_point.display().to_string())
            .collect();
        assert_eq!(
            points,
            [
                "/",
                "/data",
                "/mnt/caf\u{e9}",
                "/mnt/my data",
                "/mnt/raw\u{fffd}"
            ]
        );
    }

    #[test]
    fn escapes_at_the_end_and_stray_backslashes_survive() {
        assert_eq!(unescape(b"/a\\040"), b"/a ");
        assert_eq!(unescape(b"/a\\9x"), b"/a\\9x");
        assert_eq!(unescape(b"/a\\04"), b"/a\\04");
    }

    #[test]
    fn root_usage_is_in_range() {
        let u = usage(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&u.disk_percent));
        assert!(u.inode_percent.is_none_or(|p| (0.0..=100.0).contains(&p)));
    }
}
