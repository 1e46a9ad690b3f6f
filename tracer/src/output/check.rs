//! One doctor check's result, the `{"type":"check",...}` JSON line: made by the
//! doctor, attached to trace verdicts by explain, printed here.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result: a JSON line `{"type":"check",...}`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Stable name of the check (`ip_forward`, `nat`, ...).
    pub check: &'static str,
    pub status: Status,
    /// What was checked (an interface, a sysctl, a rule set).
    pub subject: String,
    /// What was found, in words an operator can verify.
    pub evidence: String,
    /// The command (or step) that fixes it; null when nothing needs fixing.
    pub fix: Option<String>,
}

impl Check {
    pub fn new(check: &'static str, status: Status, subject: impl Into<String>) -> Self {
        Self {
            kind: "check",
            check,
            status,
            subject: subject.into(),
            evidence: String::new(),
            fix: None,
        }
    }

    pub fn evidence(mut self, e: impl Into<String>) -> Self {
        self.evidence = e.into();
        self
    }

    pub fn fix(mut self, f: impl Into<String>) -> Self {
        self.fix = Some(f.into());
        self
    }
}

/// Checks as text lines: status, name, evidence, and the fix under it.
pub fn print_checks(checks: &[Check]) {
    for c in checks {
        println!(
            "  {}  {:<16} {}: {}",
            c.status.word(),
            c.check,
            c.subject,
            c.evidence
        );
        if let Some(f) = &c.fix {
            println!("        fix: {f}");
        }
    }
}
