//! One doctor check's result, the `{"type":"check",...}` JSON line: made by the
//! doctor, attached to trace verdicts by explain, printed here.

use pathtrace_json::Check;

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
