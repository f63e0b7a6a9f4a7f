//! The pure parts of the agent: what the maps should hold (`desired`), ids, Maglev, plans, placement.
pub(crate) mod addr;
pub mod desired;
pub(crate) mod ids;
pub(crate) mod maglev;
pub(crate) mod plan;
pub mod vip_table;
