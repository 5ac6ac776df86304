//! The in-process app harness lives in the workspace's test kit (`keyfloat_testkit::app`);
//! this module keeps the old `common::…` paths working for the server's tests.
#![allow(unused_imports)]

pub use keyfloat_testkit::app::*;
