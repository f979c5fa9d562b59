//! `cargo xtask install`: the agent, its shell completions and its manual
//! pages under a prefix, where the shells and `man` look for them.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Where each shell's completion goes under the prefix, and its name there.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "share/bash-completion/completions/watchdog"),
    ("zsh", "share/zsh/site-functions/_watchdog"),
    ("fish", "share/fish/vendor_completions.d/watchdog.fish"),
];

/// Installs `bin` as `<prefix>/bin/watchdog`, the completion scripts it
/// prints, and its manual pages (`watchdog man`: one roff page per command,
/// split into `share/man/man1/watchdog.1`, `watchdog-trace.1`, ...).
/// Returns the files written.
pub fn install(bin: &Path, prefix: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let dest = prefix.join("bin/watchdog");
    write(
        &dest,
        &fs::read(bin).with_context(|| format!("read {}", bin.display()))?,
        0o755,
    )?;
    written.push(dest.clone());
    for (shell, rel) in COMPLETIONS {
        let script = output(&dest, &["completions", shell])?;
        let path = prefix.join(rel);
        write(&path, &script, 0o644)?;
        written.push(path);
    }
    let man = String::from_utf8(output(&dest, &["man"])?).context("watchdog man: not UTF-8")?;
    for (name, page) in split_pages(&man)? {
        let path = prefix.join("share/man/man1").join(format!("{name}.1"));
        write(&path, page.as_bytes(), 0o644)?;
        written.push(path);
    }
    Ok(written)
}

/// `watchdog man` prints the pages one after another, each made of
/// clap_mangen's preamble (the `Aq` string: `.ie \n(.g .ds Aq ...` and
/// `.el .ds Aq ...`), then `.TH NAME 1 ...` and its sections.
fn split_pages(man: &str) -> Result<Vec<(String, String)>> {
    const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq", ".el .ds Aq"];
    let mut pages: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in man.split_inclusive('\n') {
        if PREAMBLE.iter().any(|p| line.starts_with(p)) {
            pending.push_str(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix(".TH ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .replace("\\-", "-");
            if name.is_empty() || name.contains('/') {
                bail!("watchdog man: a page without a usable name: {line}");
            }
            pages.push((name, std::mem::take(&mut pending) + line));
            continue;
        }
        if !pending.is_empty() {
            bail!("watchdog man: a preamble not followed by .TH: {line}");
        }
        match pages.last_mut() {
            Some((_, page)) => page.push_str(line),
            None if line.trim().is_empty() => {}
            None => bail!("watchdog man: text before the first .TH: {line}"),
        }
    }
    if pages.is_empty() || !pending.is_empty() {
        bail!("watchdog man printed no complete page");
    }
    Ok(pages)
}

fn output(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("run {} {}", bin.display(), args.join(" ")))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Writes through a temporary file renamed into place (a running agent's
/// binary is replaced, not overwritten).
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.xtask-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("rename into {}", path.display()))?;
    eprintln!("xtask: installed {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_output_splits_into_one_page_per_command() {
        let man = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n.TH watchdog 1  \"watchdog 0.1.0\"\n\
                   .SH NAME\nwatchdog\n\n.ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n\
                   .TH watchdog\\-trace 1 \"trace\"\n.SH NAME\ntrace\n";
        let pages = split_pages(man).unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["watchdog", "watchdog-trace"]);
        assert!(
            pages[1].1.starts_with(".ie \\n(.g .ds Aq"),
            "{}",
            pages[1].1
        );
        assert!(pages[1].1.contains("\n.TH watchdog\\-trace 1"));
        assert!(pages[0].1.ends_with("watchdog\n\n"));
        assert!(split_pages("").is_err());
        assert!(split_pages("text\n.TH x 1\n").is_err());
        assert!(split_pages(".TH ../x 1\n").is_err());
        assert!(split_pages(".TH x 1\n.ie \\n(.g .ds Aq \\(aq\n").is_err());
    }

    /// The real agent's pages, when it is built (`cargo xtask test` builds
    /// it before the unit tests).
    #[test]
    fn the_agents_man_page_installs_one_file_per_command() {
        let bin = crate::workspace_root().join("target/release/watchdog");
        if !bin.is_file() {
            let required = std::env::var("CI").is_ok_and(|v| !v.is_empty())
                || std::env::var("WATCHDOG_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{} is not built (cargo xtask test builds it first)",
                bin.display()
            );
            eprintln!(
                "SKIPPED: {} is not built (cargo build --release -p watchdog)",
                bin.display()
            );
            return;
        }
        let prefix = std::env::temp_dir().join(format!("wd-xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&prefix);
        let files = install(&bin, &prefix).unwrap();
        let man1 = prefix.join("share/man/man1");
        for page in [
            "watchdog",
            "watchdog-trace",
            "watchdog-run",
            "watchdog-check",
            "watchdog-bundle",
        ] {
            let text = fs::read_to_string(man1.join(format!("{page}.1"))).unwrap();
            assert_eq!(
                text.matches("\n.TH ").count(),
                1,
                "{page}: one page per file"
            );
        }
        let bash = fs::read_to_string(prefix.join(COMPLETIONS[0].1)).unwrap();
        assert!(
            bash.contains("complete -F") && bash.contains("--host-root"),
            "bash completion"
        );
        let zsh = fs::read_to_string(prefix.join(COMPLETIONS[1].1)).unwrap();
        assert!(zsh.starts_with("#compdef watchdog"), "zsh completion");
        let fish = fs::read_to_string(prefix.join(COMPLETIONS[2].1)).unwrap();
        assert!(fish.contains("complete -c watchdog"), "fish completion");
        let v = Command::new(prefix.join("bin/watchdog"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&v.stdout).starts_with("watchdog "));
        assert!(files.len() >= 4 + 5);
        let _ = fs::remove_dir_all(&prefix);
    }
}
