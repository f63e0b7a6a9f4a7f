//! The pure parts of the agent: what the maps should hold (`desired`), stable ids, Maglev, plans.
pub(crate) mod addr;
pub mod desired;
pub(crate) mod ids;
pub(crate) mod maglev;
pub(crate) mod plan;
