//! Test support for pathtrace: a namespaced hypervisor lab with fake guests on real
//! TAP devices, and helpers to run pathtrace against it. Used by the end-to-end
//! tests and by `cargo xtask demo`.

pub mod counter;
pub mod guest;
pub mod lab;
pub mod packet;
pub mod scenarios;
pub mod tracerun;
pub mod watchrun;
