//! Watching the balancer's interface for it going away and coming back.
//!
//! Netlink link notifications, with a slow re-check in case one is missed, tell the agent when the
//! interface goes away and when one of that name is back.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle};

use crate::datapath::nic::interface_index;

/// What happened to the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// It no longer exists (deleted, or its namespace went); the kernel detached the program.
    Gone,
    /// An interface of that name exists (again), with this index.
    Back { index: u32 },
}

/// How often the interface is re-checked without a notification.
const RECHECK: Duration = Duration::from_secs(2);

/// The watch task; dropping this stops it.
pub struct LinkWatch {
    task: JoinHandle<()>,
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LinkWatch {
    /// Starts watching `interface`, which has index `index` now. Spawns on the current runtime.
    pub fn spawn(
        interface: &str,
        index: u32,
        events: UnboundedSender<LinkEvent>,
    ) -> anyhow::Result<LinkWatch> {
        // A notification lost to a full socket buffer is caught by the re-check.
        let (conn, _, notes) =
            rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
                .context("subscribing to link notifications")?;
        tokio::spawn(conn);
        let task = tokio::spawn(run(interface.to_owned(), index, notes, events));
        Ok(LinkWatch { task })
    }
}

async fn run<N: futures_util::Stream + Unpin>(
    name: String,
    index: u32,
    mut notes: N,
    events: UnboundedSender<LinkEvent>,
) {
    let mut known = Some(index);
    loop {
        tokio::select! {
            note = notes.next() => {
                if note.is_none() {
                    tokio::time::sleep(RECHECK).await;
                }
                while let Some(Some(_)) = notes.next().now_or_never() {}
            }
            _ = tokio::time::sleep(RECHECK) => {}
        }
        let now = interface_index(&name);
        if now == known {
            continue;
        }
        // Deleted and re-created between two looks: the old one is gone all the same.
        if known.is_some() && events.send(LinkEvent::Gone).is_err() {
            return;
        }
        if let Some(index) = now {
            if events.send(LinkEvent::Back { index }).is_err() {
                return;
            }
        }
        known = now;
    }
}
