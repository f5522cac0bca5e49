//! Gas Town integration: the town's layout, its events file, what they mean for monitors, and
//! the orphaned agent processes no session owns.

pub mod events;
pub mod layout;
pub mod lifecycle;
pub mod orphans;
