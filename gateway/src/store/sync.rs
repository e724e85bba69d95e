//! The syncer: makes committed groups durable, and only then answers their writes, wakes
//! the tasks that have work from them and hands their changes to the publisher.
//!
//! The writer commits without waiting for the disk (SQLite's `synchronous=NORMAL`) and
//! hands each committed group here. One `fdatasync` of the WAL covers every group committed
//! before it began, and while it runs the writer already applies the next group: the disk
//! wait no longer holds up the single writer, which at a steady 1,000 replies a second was
//! busy most of its time waiting for it.
//!
//! A group is visible to readers between its commit and its sync. A poll moves its offset
//! only on answered writes. A send through a connector whose sends can be ambiguous goes out
//! only after a durable write recorded its attempt (covering everything committed before
//! it): the sender's own, or for a send handed to it, the write that queued it, handed only
//! from here. A change to a sent message, a web-chat delivery or a model call made from
//! such a read is not covered: a power cut in that window can leave the provider with a
//! change the store lost.
//!
//! Agent runs are woken by the writer at the commit, not from here: a run only reads and
//! calls the model before its outcome's write, whose sync covers the message it answers, so
//! a reply no longer waits for its message's own sync (about 2 ms off p50 and p99 at 600
//! replies a second). Except while someone watches the inbox live: the run's frames
//! (`running`, streamed text) go straight to the bus, and must not come before the
//! message's and the run's `queued`, which are published from here: those runs are woken
//! by the publisher once it has put the group's frames on the bus.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::outbox::Handed;
use super::publish::{Changes, Published};
use super::write::Wake;
use super::{Reply, StoreError, Written};
use crate::bus::Bus;
use crate::metrics::Metrics;
use crate::tasks::News;

/// A group the writer committed, waiting to be made durable.
pub(super) struct Committed {
    pub(super) answers: Vec<(Reply, Result<Written, StoreError>)>,
    pub(super) changes: Changes,
    pub(super) wake: Wake,
}

pub(super) struct Syncer {
    /// The database's WAL file, which every commit appends to.
    pub(super) wal: PathBuf,
    /// Whether to sync at all (`store.synchronous: full`); otherwise groups are answered as
    /// they come, and survive a process crash but not a power loss.
    pub(super) durable: bool,
    /// Cancelled for good when a sync fails: after a failed fsync the kernel may have
    /// dropped the pages it could not write, so a later fsync that succeeds proves nothing.
    /// The writer then refuses every write, and the gateway stops so that it restarts from
    /// what is on disk.
    pub(super) failed: CancellationToken,
    pub(super) bus: Bus,
    pub(super) published: mpsc::Sender<Published>,
    /// Wakes the checkpointer; a full queue means it is awake already.
    pub(super) wal_grew: mpsc::Sender<()>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) outbox_ready: Arc<News>,
    /// For a watched group's runs when nobody watches by the time it is durable; else the
    /// publisher posts them after the group's frames. The writer posts the others.
    pub(super) runs_ready: Arc<News>,
    pub(super) handed: Arc<Handed>,
}

impl Syncer {
    /// Runs on a blocking thread until the writer has ended and every group it committed
    /// is answered.
    pub(super) fn run(self, committed: Receiver<Committed>) {
        // Opened at the first sync: the WAL exists from the writer's first commit on, and
        // the writer's connection keeps it (the same file) open for as long as it runs.
        let mut wal: Option<File> = None;
        let mut groups = Vec::new();
        while let Ok(first) = committed.recv() {
            groups.push(first);
            groups.extend(committed.try_iter());
            if !self.failed.is_cancelled()
                && let Err(e) = self.sync(&mut wal)
            {
                self.failed.cancel();
                tracing::error!(wal = %self.wal.display(), error = %e, "cannot make committed writes durable; the store refuses writes until the gateway restarts");
            }
            let failed = self.failed.is_cancelled();
            for group in groups.drain(..) {
                if failed {
                    self.metrics.store_commit_failed();
                    refuse_group(group, &self.handed);
                } else {
                    self.hand_out(group);
                }
            }
        }
        tracing::debug!("store syncer finished");
    }

    fn sync(&self, wal: &mut Option<File>) -> std::io::Result<()> {
        if !self.durable {
            return Ok(());
        }
        let started = Instant::now();
        let file = match wal {
            Some(file) => file,
            None => {
                let file = File::open(&self.wal)?;
                // SQLite makes a new WAL at each start (a clean stop deletes it) and, with
                // its own syncs off, would not sync the directory entry before our answers.
                if let Some(dir) = self.wal.parent() {
                    File::open(dir)?.sync_all()?;
                }
                wal.insert(file)
            }
        };
        file.sync_data()?;
        self.metrics.store_sync(started.elapsed());
        Ok(())
    }

    /// Answers a durable group's writes, then wakes and publishes what it changed.
    fn hand_out(&self, group: Committed) {
        let _ = self.wal_grew.try_send(());
        // Decided before anyone is answered: a client that subscribes after its write was
        // answered must not be sent that write as news.
        let publish = !group.changes.is_empty() && self.bus.has_subscribers();
        // Before the news, so that news for a conversation finds its handed send ready, and
        // before the answers, so that a writer that hears back finds its send handed out.
        self.handed.durable(group.wake.handed);
        for (reply, result) in group.answers {
            let _ = reply.send(result);
        }
        if !group.wake.outbox.is_empty() {
            self.outbox_ready.post(group.wake.outbox);
        }
        // Views are built only for someone who listens; a slow publisher holds the syncer
        // (and through it the writer) back rather than dropping frames a stream was promised.
        // The group's runs start once its frames are out.
        let runs = group.wake.agent;
        if publish {
            let changes = group.changes;
            if let Err(unsent) = self.published.blocking_send(Published { changes, runs }) {
                self.runs_ready.post(unsent.0.runs);
            }
        } else if !runs.is_empty() {
            self.runs_ready.post(runs);
        }
    }
}

/// Refuses a committed group that cannot be made durable: its writes are answered so, and
/// its sends are not handed out.
pub(super) fn refuse_group(group: Committed, handed: &Handed) {
    handed.release(&group.wake.handed);
    refuse(group.answers.into_iter().map(|(reply, _)| reply));
}

/// Answers writes that cannot be known durable.
pub(super) fn refuse(replies: impl IntoIterator<Item = Reply>) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::NotDurable));
    }
}
