//! Test support for pathtrace: a namespaced hypervisor lab with fake guests on real
//! TAP devices (or a real Linux guest under QEMU), and helpers to run pathtrace
//! against it. Used by the end-to-end tests, `cargo xtask demo` and `cargo xtask
//! vm-test`.

pub mod counter;
pub mod dhcp;
pub mod guest;
pub mod lab;
pub mod packet;
pub mod packet6;
pub mod realguest;
pub mod scenarios;
pub mod tcp;
pub mod tracerun;
pub mod vm;
pub mod watchrun;
