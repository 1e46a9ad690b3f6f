//! One module per hook family.
mod frees;
mod tc;
mod watch;
