//! Is a workspace's `.git` usable: a directory, or a worktree's `gitdir:` file that points somewhere real.

use std::fs;
use std::path::{Path, PathBuf};

/// `None` when the workspace has no `.git`; otherwise whether the repository's HEAD can be read.
pub(crate) fn repository_valid(workspace: &Path) -> Option<bool> {
    let dot_git = workspace.join(".git");
    fs::symlink_metadata(&dot_git).ok()?;
    // A `.git` symlinked to a directory counts as one; a dangling link is broken.
    let Ok(meta) = fs::metadata(&dot_git) else {
        return Some(false);
    };
    let git_dir = if meta.is_dir() {
        dot_git
    } else {
        match worktree_git_dir(&dot_git) {
            Some(dir) => dir,
            None => return Some(false),
        }
    };
    Some(head_readable(&git_dir))
}

/// The directory a worktree's `.git` file names (`gitdir: <path>`, relative to the workspace).
fn worktree_git_dir(dot_git_file: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(dot_git_file).ok()?;
    let target = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
    let target = Path::new(target);
    let full = if target.is_absolute() {
        target.to_path_buf()
    } else {
        dot_git_file.parent()?.join(target)
    };
    full.is_dir().then_some(full)
}

/// HEAD is a symbolic ref (`ref: refs/heads/x`) or a detached commit id.
fn head_readable(git_dir: &Path) -> bool {
    let Ok(head) = fs::read_to_string(git_dir.join("HEAD")) else {
        return false;
    };
    let head = head.trim();
    head.starts_with("ref: refs/")
        || (head.len() >= 40 && head.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_git_means_no_metric() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(repository_valid(dir.path()), None);
    }

    #[test]
    fn a_git_directory_with_head_is_valid_and_without_is_not() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".git")).unwrap();
        assert_eq!(repository_valid(dir.path()), Some(false));
        fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        assert_eq!(repository_valid(dir.path()), Some(true));
        fs::write(dir.path().join(".git/HEAD"), "garbage").unwrap();
        assert_eq!(repository_valid(dir.path()), Some(false));
    }

    #[test]
    fn a_worktree_file_is_valid_only_while_its_gitdir_exists() {
        let repo = tempfile::tempdir().unwrap();
        let gitdir = repo.path().join("worktrees/wt");
        fs::create_dir_all(&gitdir).unwrap();
        fs::write(
            gitdir.join("HEAD"),
            "0123456789abcdef0123456789abcdef01234567\n",
        )
        .unwrap();
        let wt = tempfile::tempdir().unwrap();
        fs::write(
            wt.path().join(".git"),
            format!("gitdir: {}\n", gitdir.display()),
        )
        .unwrap();
        assert_eq!(repository_valid(wt.path()), Some(true));
        fs::remove_dir_all(&gitdir).unwrap();
        assert_eq!(repository_valid(wt.path()), Some(false));
    }
}
