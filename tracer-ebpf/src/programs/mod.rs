//! One module per hook family.
mod deep;
mod flow;
mod frees;
mod tc;
mod watch;
