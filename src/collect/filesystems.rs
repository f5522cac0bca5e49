//! Filesystems: which are real (from `/proc/self/mountinfo`), and how full and writable each is.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::sys::statvfs::{FsFlags, statvfs};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// `major:minor` of the device.
    pub device: String,
    pub fstype: String,
    pub source: String,
    /// Mounted read-only (per-mount or superblock option `ro`).
    pub read_only: bool,
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// Parses `/proc/self/mountinfo`; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split_whitespace().collect();
            let r: Vec<&str> = right.split_whitespace().collect();
            let has_ro = |opts: &str| opts.split(',').any(|o| o == "ro");
            Some(Mount {
                device: l.get(2)?.to_string(),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                read_only: has_ro(l.get(5)?) || r.get(2).is_some_and(|o| has_ro(o)),
                fstype: r.first()?.to_string(),
                source: r.get(1).map_or(String::new(), |s| unescape(s)),
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

/// The real filesystems: data-holding types or block devices, plus `/` whatever it is; one
/// mount point per device (the shortest), so bind mounts are not counted twice.
pub fn real_filesystems(mounts: &[Mount]) -> Vec<Mount> {
    let mut picked: Vec<Mount> = mounts
        .iter()
        .filter(|m| {
            m.mount_point == Path::new("/")
                || REAL_TYPES.contains(&m.fstype.as_str())
                || m.source.starts_with("/dev/")
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

    const SAMPLE: &str = "\
22 1 252:0 / / rw,relatime - ext4 /dev/vda rw,discard
23 22 0:5 / /proc rw,relatime - proc proc rw
24 22 0:40 / /mnt/my\\040data rw - ext4 /dev/vdb1 rw
25 22 252:0 /srv /srv/bind rw - ext4 /dev/vda rw
26 22 0:50 / /data ro,relatime - xfs /dev/vdc ro
27 22 0:51 / /scratch rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn mountinfo_parses_with_escapes_and_read_only_flags() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 6);
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
        assert_eq!(points, ["/", "/data", "/mnt/my data"]);
    }

    #[test]
    fn root_usage_is_in_range() {
        let u = usage(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&u.disk_percent));
        assert!(u.inode_percent.is_none_or(|p| (0.0..=100.0).contains(&p)));
    }
}
