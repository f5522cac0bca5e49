//! Records the commit the binary is built from, for `--version` (`HM_GIT_COMMIT`): the short
//! hash, with `-dirty` when the work tree has changes, or `unknown` outside a git checkout
//! (a crate tarball, a `.deb` built from one).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).map(|hash| {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        if dirty { format!("{hash}-dirty") } else { hash }
    });
    println!(
        "cargo:rustc-env=HM_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // A new commit or checkout changes these; an edit of a tracked file changes the index.
    for path in [".git/HEAD", ".git/index", ".git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=HM_GIT_COMMIT");
}
