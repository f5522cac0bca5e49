//! The reference documents name real things: every test RELIABILITY.md cites exists.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The source file of a module path (`store::file` is `src/store/file.rs` or
/// `src/store/file/mod.rs`), if there is one.
fn module_file(root: &Path, parts: &[&str]) -> Option<PathBuf> {
    let base = parts
        .iter()
        .fold(root.to_path_buf(), |p, part| p.join(part));
    [base.with_extension("rs"), base.join("mod.rs")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Where a cited test lives, and the function (or module) it names.
fn resolve(citation: &str) -> Result<(), String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let parts: Vec<&str> = citation.split("::").collect();
    let (file, name) = if let Some(test_file) = module_file(&manifest.join("tests"), &parts[..1]) {
        (test_file, parts[1..].join("::"))
    } else {
        // `a::b::tests` or `a::b::tests::name`: the module before `tests`; or a module.
        let Some(at) = parts.iter().position(|p| *p == "tests") else {
            return module_file(&manifest.join("src"), &parts)
                .map(|_| ())
                .ok_or_else(|| format!("{citation}: no test file, module or `tests` module"));
        };
        let file = module_file(&manifest.join("src"), &parts[..at])
            .ok_or_else(|| format!("{citation}: no source file for {}", parts[..at].join("::")))?;
        (file, parts[at + 1..].join("::"))
    };
    let text = std::fs::read_to_string(&file).unwrap();
    let wanted = if name.is_empty() {
        "mod tests".to_string()
    } else {
        format!("fn {name}(")
    };
    if text.contains(&wanted) {
        Ok(())
    } else {
        Err(format!(
            "{citation}: `{wanted}` is not in {}",
            file.display()
        ))
    }
}

#[test]
fn every_test_reliability_md_cites_exists() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("RELIABILITY.md"))
        .unwrap();
    let mut cited = 0;
    let mut missing = Vec::new();
    for row in doc.lines().filter(|l| l.starts_with('|')) {
        let Some(last) = row.trim_end_matches('|').rsplit('|').next() else {
            continue;
        };
        for (i, piece) in last.split('`').enumerate() {
            let is_path = i % 2 == 1
                && piece.contains("::")
                && piece
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':');
            if is_path {
                cited += 1;
                if let Err(e) = resolve(piece) {
                    missing.push(e);
                }
            }
        }
    }
    assert!(
        cited > 50,
        "only {cited} citations found: is the table still there?"
    );
    assert!(
        missing.is_empty(),
        "RELIABILITY.md cites tests that do not exist:\n{}",
        missing.join("\n")
    );
}
