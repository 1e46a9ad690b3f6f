//! One module per hook family.
mod deep;
mod frees;
mod tc;
mod watch;
