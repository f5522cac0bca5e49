//! The control plane: a Unix socket speaking one JSON object per line, its server and its client.

pub mod client;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod service;
pub mod socket;
