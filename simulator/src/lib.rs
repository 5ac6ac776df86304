#![doc = include_str!("../README.md")]

pub mod card;
#[cfg(feature = "hid")]
pub mod hid;
pub mod scenario;
