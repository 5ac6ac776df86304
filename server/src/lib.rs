#![doc = include_str!("../README.md")]

pub mod license_file;
