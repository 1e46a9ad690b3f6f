//! What the kernel programs are allowed to do, kept current from user space:
//! how many requests may start being followed (a budget of `max_follow` at once)
//! and whether the hooks off the VM's port are armed (see `tracer_common::state`).
//!
//! The kernel counts requests it starts following (`STARTED`) and notes when the
//! last one came (`LAST_REQUEST`); only user space knows when a request's trace
//! is decided. Each tick it hands back the budget (`FINISHED`) and, once nothing
//! is open, disarms the hooks (`DISARMED`). Both writes are to slots only user
//! space writes, so they never race with the kernel's updates.

use anyhow::Result;
use tracer_common::state::{DISARMED, FINISHED, LAST_REQUEST, STARTED};

use crate::probes::Probes;

/// Requests followed at once, at most: a ping a second with a reply wait of two
/// seconds has three open; more only comes from a guest sending faster than
/// anyone reads verdicts, and following all of it would only cost the host.
pub const MAX_FOLLOW: u32 = 8;

/// How many requests to follow at once for `--count N`.
pub fn max_follow(count: u32) -> u32 {
    count.clamp(1, MAX_FOLLOW)
}

#[derive(Default)]
pub struct Budget {
    /// What was last written to `FINISHED` and `DISARMED`.
    finished: u64,
    disarmed: u64,
}

impl Budget {
    /// `STARTED` as the kernel has it now. Read before the tick's events are
    /// taken, so every request counted here is either still open after them or
    /// decided (a request started after this read is then counted twice for a
    /// tick: the budget errs on following less, never on leaking).
    pub fn started(probes: &Probes) -> u64 {
        probes.state(STARTED).unwrap_or(0)
    }

    /// After a tick: `started` (read before its events were taken), the traces
    /// still open, and the time of the newest request the correlator has seen.
    pub fn settle(
        &mut self,
        probes: &mut Probes,
        started: u64,
        open: usize,
        newest_request: u64,
    ) -> Result<()> {
        let finished = finished(started, open);
        if finished != self.finished {
            probes.set_state(FINISHED, finished)?;
            self.finished = finished;
        }
        if open == 0 {
            let last = probes.state(LAST_REQUEST)?;
            if let Some(to) = disarm_to(last, newest_request, self.disarmed) {
                probes.set_state(DISARMED, to)?;
                self.disarmed = to;
            }
        }
        Ok(())
    }
}

/// Requests done: all started but the ones still open (a request whose events
/// were lost is never open, so its budget comes back too).
fn finished(started: u64, open: usize) -> u64 {
    started.saturating_sub(open as u64)
}

/// With no trace open: disarm up to the kernel's last request, but only once
/// that request's own event was seen (it may still be queued, its trace not yet
/// started); None when nothing changes.
fn disarm_to(last_request: u64, newest_seen: u64, disarmed: u64) -> Option<u64> {
    (last_request != disarmed && newest_seen >= last_request).then_some(last_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_comes_back_as_traces_are_decided() {
        assert_eq!(finished(10, 3), 7);
        assert_eq!(finished(10, 0), 10);
        // More open than counted (a trace started without the kernel's count).
        assert_eq!(finished(1, 2), 0);
    }

    #[test]
    fn disarms_only_after_the_last_request_was_seen() {
        // Nothing ever requested: already disarmed (both 0).
        assert_eq!(disarm_to(0, 0, 0), None);
        // The last request's event is in: disarm.
        assert_eq!(disarm_to(500, 500, 0), Some(500));
        // A newer request than any seen: its trace has not started, stay armed.
        assert_eq!(disarm_to(900, 500, 500), None);
        // Already disarmed at that request.
        assert_eq!(disarm_to(500, 700, 500), None);
    }

    #[test]
    fn follows_as_many_as_asked_up_to_the_cap() {
        assert_eq!(max_follow(1), 1);
        assert_eq!(max_follow(3), 3);
        assert_eq!(max_follow(100_000), MAX_FOLLOW);
        assert_eq!(max_follow(0), 1);
    }
}
