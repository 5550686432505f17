// A test binary: helpers outside #[test] functions may fail loudly too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

//! Rendering of every notice, the file outbox, and delivery to a real SMTP server process.

mod files;
mod golden;
mod samples;
mod smtp;
