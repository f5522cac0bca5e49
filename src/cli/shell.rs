//! `completions SHELL` and `man`: shell completions and the man page, generated from the clap
//! definitions the parser uses, so they cannot drift from the real options.

use std::io::Write;

use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

/// The shells `completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash: `source <(health-monitor completions bash)`, or install into
    /// /usr/share/bash-completion/completions/health-monitor.
    Bash,
    /// zsh: install as `_health-monitor` in a directory of `$fpath`.
    Zsh,
    /// fish: install into ~/.config/fish/completions/health-monitor.fish.
    Fish,
}

/// `completions` options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh or fish
    pub shell: Shell,
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out),
    }
}

/// Writes the man page (roff, section 1) to `out`.
pub fn write_man(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_know_every_command_and_option() {
        let bash = text(|o| write_completions(Shell::Bash, o));
        for word in [
            "start",
            "status",
            "report",
            "config",
            "--db-path",
            "--interval",
            "--stdin",
        ] {
            assert!(bash.contains(word), "bash completions lack {word}");
        }
        let zsh = text(|o| write_completions(Shell::Zsh, o));
        assert!(zsh.starts_with("#compdef health-monitor"), "{}", &zsh[..40]);
        let fish = text(|o| write_completions(Shell::Fish, o));
        assert!(fish.contains("complete -c health-monitor"));
    }

    #[test]
    fn the_man_page_is_roff_with_the_commands() {
        let man = text(|o| write_man(o).unwrap());
        assert!(
            man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH health-monitor 1"),
            "{}",
            &man[..200]
        );
        assert!(man.contains(".TH health-monitor 1"));
        for word in ["start", "report", "config", "\\-\\-db\\-path"] {
            assert!(man.contains(word), "the man page lacks {word}");
        }
    }
}
