//! `pathtrace`: follow a KVM guest's packets through this hypervisor.

mod cli;
mod correlate;
mod dns;
mod explain;
#[cfg(test)]
mod fuzz;
mod kernel;
mod output;
mod preflight;
mod probes;
mod topology;
mod trace;

use clap::Parser;

fn main() {
    // A bug must still end in one line and exit status 2, never a backtrace. Our
    // kernel attachments are owned by file descriptors, so exiting detaches them.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "pathtrace: internal error: {}",
            info.to_string().replace('\n', " ")
        );
        std::process::exit(2);
    }));
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, as for every other bad input.
            let msg = e.to_string();
            let text: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!(
                "pathtrace: {} (see --help)",
                text.join(" ").trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    let code = match trace::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            // One clear line, no backtrace: the operator needs the cause, not a trace.
            eprintln!("pathtrace: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
