//! The workspace's one test kit (dev-only, never published): every test that polls, talks
//! HTTP, drives a browser, runs `keyfloat serve` or builds the app in process uses these
//! instead of a copy of its own.
//!
//! - [`wait`]: poll a condition with a deadline (never a fixed sleep);
//! - [`http`]: one blocking HTTP/1.1 client for loopback (ureq);
//! - [`webdriver`]: the few W3C WebDriver calls the browser test needs, over [`http`];
//! - `pcscd` (feature `pcsc`): the one private pcscd a PC/SC test binary shares;
//! - [`process`]: run a tool until it succeeds, talk to a child over stdin/stdout;
//! - [`serve`]: run a `keyfloat` server process and wait for its `listening on` lines;
//! - [`app`]: the server app in process over a temp data dir and a simulated key, with the
//!   key picture published into the cell synchronously (or by the real monitor thread);
//! - [`stats`]: latency samples of a benchmark and their summary line.
#![warn(unreachable_pub)]

pub mod app;
pub mod http;
#[cfg(feature = "pcsc")]
pub mod pcscd;
pub mod process;
pub mod serve;
pub mod stats;
pub mod wait;
pub mod webdriver;

pub use wait::{spin_until, wait_for, wait_for_async, wait_for_every, wait_until, wait_until_async};
