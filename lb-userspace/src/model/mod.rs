//! The pure parts of the agent: desired map contents, ids, Maglev, plans, VIP table placement.
pub(crate) mod addr;
pub mod desired;
pub(crate) mod ids;
pub(crate) mod maglev;
pub(crate) mod plan;
pub mod vip_table;
