//! Run `pathtrace watch --json` in a lab's hypervisor namespace in the background
//! and read its JSON lines while the test drives traffic.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{lab::Lab, tracerun::pathtrace_bin};

pub struct WatchRun {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl WatchRun {
    /// Start `pathtrace watch --json ARGS...`; returns once it is watching.
    pub fn start(lab: &Lab, args: &[&str]) -> Result<Self> {
        let mut all = vec!["watch", "--json"];
        all.extend_from_slice(args);
        let mut child = lab
            .command_in_hv(&pathtrace_bin(), &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pathtrace watch")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("stdout")?;
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let mut err = BufReader::new(child.stderr.take().context("stderr")?);
        let mut first = String::new();
        err.read_line(&mut first)?;
        let stderr = Arc::new(Mutex::new(first.clone()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        let mut run = Self {
            child,
            lines,
            stderr,
        };
        if !first.contains("watching") {
            let code = run.stop()?;
            bail!(
                "pathtrace watch did not start (exit {code}): {}",
                run.stderr()
            );
        }
        Ok(run)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Option<Value> {
        self.lines()
            .into_iter()
            .rev()
            .find(|v| v["type"] == "watch")
    }

    /// Wait (bounded) for a line satisfying `pred`; returns it.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let start = Instant::now();
        let mut seen = 0;
        loop {
            let lines = self.lines();
            if let Some(v) = lines[seen..].iter().find(|v| pred(v)) {
                return Ok(v.clone());
            }
            seen = lines.len();
            if start.elapsed() > limit {
                bail!(
                    "no matching line within {limit:?}; last: {}",
                    lines.last().map(Value::to_string).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Let `n` more snapshots arrive (the counters have caught up).
    pub fn wait_snapshots(&self, n: usize, limit: Duration) -> Result<Value> {
        let count = |l: &[Value]| l.iter().filter(|v| v["type"] == "watch").count();
        let target = count(&self.lines()) + n;
        let start = Instant::now();
        while count(&self.lines()) < target {
            if start.elapsed() > limit {
                bail!("watch stopped sending snapshots");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.latest().context("no snapshot")
    }

    /// Stop it as an operator would (SIGINT); its exit status.
    pub fn stop(&mut self) -> Result<i32> {
        self.signal(libc::SIGINT)
    }

    /// Send `signal` and wait (bounded) for the exit status.
    pub fn signal(&mut self, signal: i32) -> Result<i32> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code().unwrap_or(-1));
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("pathtrace watch ignored signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WatchRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The report of VM port `port` in a snapshot.
pub fn vm<'a>(snapshot: &'a Value, port: &str) -> Option<&'a Value> {
    snapshot["vms"]
        .as_array()?
        .iter()
        .find(|v| v["port"] == port)
}

/// The drop points of VM port `port` in a snapshot (empty when none or absent).
pub fn drops(snapshot: &Value, port: &str) -> Vec<Value> {
    vm(snapshot, port)
        .and_then(|v| v["drops"].as_array().cloned())
        .unwrap_or_default()
}
