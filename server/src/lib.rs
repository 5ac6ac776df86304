#![doc = include_str!("../README.md")]
#![warn(unreachable_pub)]

pub mod license_file;
pub mod listen;
pub mod logs;
pub mod metrics;

pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod files;
pub mod gate;
pub mod ha;
pub mod hashing;
pub mod model;
pub mod params;
pub mod ratelimit;
pub mod render;
pub mod routes;
pub mod service;
pub mod state;
pub mod store;
pub mod terms;
pub mod tls;
pub mod web;

pub use app::{app, serve};
pub use config::{KeyBackend, ServerConfig};
pub use error::{ApiError, ApiResult};
pub use state::{AppState, KeyControl, KeyPolicy, MetricsAccess, Security, StateParts};
pub use store::{SqliteStore, Store};

/// Exit status of `keyfloat serve` when `crashIfNoHardwareKey` stops it.
pub const EXIT_NO_HARDWARE_KEY: u8 = 3;
