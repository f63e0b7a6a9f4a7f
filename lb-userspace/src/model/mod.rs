//! The pure parts of the agent: what the maps should hold (`desired`), stable ids, Maglev, plans.
pub mod addr;
pub mod desired;
pub mod ids;
pub mod maglev;
pub mod plan;
