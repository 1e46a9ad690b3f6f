//! Facts about the running kernel, read at run time (never hard-coded).
pub mod btf;
pub mod kallsyms;
pub mod tracefs;
