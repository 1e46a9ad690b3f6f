//! The one way pathtrace runs a host tool (`nft`, `iptables-legacy-save`, `tc`,
//! `ip`): `LC_ALL=C` so the output is the same on every host, stdin closed so a
//! tool never waits for input, and an error that tells "the tool is not
//! installed" from "the tool failed" (with its stderr) from "there was nothing"
//! (empty output).

use std::{
    fmt,
    io::ErrorKind,
    process::{Command, Stdio},
};

/// Why a tool gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The program is not installed (not on PATH).
    Missing { program: String },
    /// It ran and failed: its exit status and what it said on stderr.
    Failed {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::Missing { program } => write!(f, "{program} is not installed"),
            ToolError::Failed {
                command,
                status,
                stderr,
            } => {
                let code = status.map_or("a signal".to_string(), |c| format!("status {c}"));
                write!(f, "{command} failed with {code}")?;
                if !stderr.is_empty() {
                    write!(f, ": {stderr}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ToolError {}

/// What a tool printed on stdout. `Empty` is "nothing there" (an empty rule
/// set), not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Text(String),
    Empty,
}

impl Output {
    /// The text, "" when empty.
    pub fn text(&self) -> &str {
        match self {
            Output::Text(t) => t,
            Output::Empty => "",
        }
    }
}

/// Run `program args` and return its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<Output, ToolError> {
    log::debug!("running {program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => ToolError::Missing {
                program: program.to_string(),
            },
            _ => ToolError::Failed {
                command: command_line(program, args),
                status: None,
                stderr: e.to_string(),
            },
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            command: command_line(program, args),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(match text.trim().is_empty() {
        true => Output::Empty,
        false => Output::Text(text),
    })
}

/// Run it, and take "not installed" or "failed" as no answer (for optional
/// sources, such as a rule-set tool the host does not use).
pub fn run_optional(program: &str, args: &[&str]) -> Option<String> {
    match run(program, args) {
        Ok(out) => Some(out.text().to_string()),
        Err(e) => {
            log::debug!("{e}");
            None
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_missing_from_failed_from_empty() {
        assert_eq!(
            run("pathtrace-no-such-tool", &[]),
            Err(ToolError::Missing {
                program: "pathtrace-no-such-tool".into()
            })
        );
        let failed = run("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        assert_eq!(
            failed.to_string(),
            "sh -c echo nope >&2; exit 3 failed with status 3: nope"
        );
        assert_eq!(run("true", &[]), Ok(Output::Empty));
        assert_eq!(run("echo", &["x"]).unwrap().text(), "x\n");
    }

    #[test]
    fn runs_in_the_c_locale_without_stdin() {
        let out = run("sh", &["-c", "echo $LC_ALL; cat"]).unwrap();
        assert_eq!(out.text(), "C\n");
    }
}
