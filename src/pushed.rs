//! Custom metrics pushed by agents and scripts.
