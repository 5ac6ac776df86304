#![doc = include_str!("../README.md")]
#![warn(unreachable_pub)]

pub mod card;
#[cfg(feature = "hid")]
pub mod hid;
pub mod scenario;
