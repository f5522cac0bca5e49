//! Gas Town integration: the town's layout, its events file, and what they mean for monitors.

pub mod events;
pub mod layout;
pub mod lifecycle;
