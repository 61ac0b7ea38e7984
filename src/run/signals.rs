//! Synchronous signal handling for the supervisor: the signals it cares about
//! are blocked and taken one at a time with `sigwaitinfo(2)`, so there are no
//! handlers and no races with the child's exit. The sets and masks themselves
//! are in [`crate::sys::signal`].

pub use crate::sys::signal::SignalSet;
