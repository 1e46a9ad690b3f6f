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
    // A bug must still end in one line and exit status 2, never a backtrace. Our
    // kernel attachments are owned by file descriptors, so exiting detaches them.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "pathtrace: internal error: {}",
            info.to_string().replace('\n', " ")
        );
        std::process::exit(2);
    }));
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
