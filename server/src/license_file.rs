//! Signed license files: the vendor-issued JSON documents the server loads.
