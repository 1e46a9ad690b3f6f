//! `pathtrace doctor`: checks and records of the hypervisor's network state.

pub mod snapshot;
