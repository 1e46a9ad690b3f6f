//! `pathtrace`: follow a KVM guest's packets through this hypervisor.

mod cli;
mod correlate;
mod explain;
mod kernel;
mod output;
mod preflight;
mod probes;
mod topology;
mod trace;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
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
