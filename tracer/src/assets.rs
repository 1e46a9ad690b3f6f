//! `pathtrace generate-assets DIR` (hidden): the manual pages (one per command)
//! and the bash/zsh/fish completions, generated from the command line's own
//! definition so they can never disagree with it. `cargo xtask deb` packages them.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Top;

pub fn generate(dir: &Path) -> Result<i32> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // pathtrace.1, pathtrace-trace.1, pathtrace-watch.1, ...
    clap_mangen::generate_to(Top::command(), &man).context("writing manual pages")?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Top::command(), "pathtrace", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_per_command_and_three_shells() {
        let dir = std::env::temp_dir().join(format!("pathtrace-assets-{}", std::process::id()));
        super::generate(&dir).unwrap();
        let names = |sub: &str| {
            let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        let man = names("man");
        for page in [
            "pathtrace.1",
            "pathtrace-trace.1",
            "pathtrace-watch.1",
            "pathtrace-doctor.1",
            "pathtrace-report.1",
        ] {
            assert!(man.contains(&page.to_string()), "{man:?}");
        }
        assert!(!man.iter().any(|p| p.contains("generate")), "{man:?}");
        assert_eq!(
            names("completions"),
            ["_pathtrace", "pathtrace.bash", "pathtrace.fish"]
        );
        let watch = std::fs::read_to_string(dir.join("man/pathtrace-watch.1")).unwrap();
        assert!(watch.contains("prometheus"), "{watch}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
