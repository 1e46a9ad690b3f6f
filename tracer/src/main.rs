//! `pathtrace`: follow a KVM guest's packets through this hypervisor.

mod assets;
mod budget;
mod cli;
mod cluster;
mod correlate;
mod deep;
mod dhcparp;
mod dns;
mod doctor;
mod explain;
#[cfg(test)]
mod fuzz;
mod host;
mod hostconfig;
mod kernel;
mod logging;
mod output;
mod pcap;
mod preflight;
mod probes;
mod report;
#[cfg(test)]
mod testdata;
mod topology;
mod trace;
mod watch;

use std::ffi::OsString;

use clap::Parser;

fn main() {
    // A bug must still end in one line and exit status 2, never a backtrace. Our
    // kernel attachments are owned by file descriptors, so exiting detaches them.
    std::panic::set_hook(Box::new(|info| {
        watch::tui::restore_terminal();
        eprintln!(
            "pathtrace: internal error: {}",
            info.to_string().replace('\n', " ")
        );
        std::process::exit(2);
    }));
    let args = cli::with_default_command(std::env::args_os().collect());
    let top = parse::<cli::Top>(args);
    logging::init(top.verbose);
    log::debug!("pathtrace {}", cli::VERSION);
    let result = match &top.command {
        cli::Command::Trace(c) => trace::run(c),
        cli::Command::Watch(c) => watch::run(c),
        cli::Command::Doctor(c) => doctor::run(c),
        cli::Command::Report(c) => report::run(c),
        cli::Command::GenerateAssets { dir } => assets::generate(dir),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            // One clear line, no backtrace: the operator needs the cause, not a trace.
            eprintln!("pathtrace: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Parse the command line; bad usage is one line on stderr and exit status 2.
fn parse<T: Parser>(args: impl IntoIterator<Item = OsString>) -> T {
    match T::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
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
    }
}
