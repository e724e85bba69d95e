//! The checkpointer: copies committed pages from the WAL into the database file on its own
//! connection and thread, beside the writer, whenever the writer has committed since the
//! last copy. The writer's own checkpoints (which hold up the group that triggers them)
//! then find little left to copy; measured with the ingest bench, a pause between copies
//! let the writer's checkpoints grow and doubled the p99 latency.
//!
//! Nothing waits for a checkpoint, so its thread runs at a lower CPU priority than the
//! rest of the gateway: on a busy machine the work a reply waits for goes first (in the
//! Telegram bench at 1,000 replies a second, a lower p99 in 9 of 11 interleaved pairs).
//! While the machine stays saturated the checkpointer falls behind and the WAL grows: a
//! checkpoint paused mid-copy holds SQLite's checkpoint lock, so the writer's own
//! (`wal_autocheckpoint`) copies nothing meanwhile. It catches up once the load eases.

use std::path::Path;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::{BUSY_TIMEOUT, StoreError};

/// How much the checkpointer's thread raises its nice value (0 is the default, 19 the
/// lowest priority). From 0, at 10, the scheduler gives it about a tenth of the share of
/// a default thread.
#[cfg(target_os = "linux")]
const NICER_BY: libc::c_int = 10;

/// Opens the checkpointer's connection; the database exists and is migrated by now.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Runs on its own thread until the writer has ended. `committed` carries a signal after
/// the writer's commits.
pub(super) fn run(conn: Connection, mut committed: mpsc::Receiver<()>) {
    lower_this_threads_priority();
    while committed.blocking_recv().is_some() {
        // PASSIVE never waits for the writer or readers; what it cannot copy now, a later one will.
        let checkpoint = conn
            .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
            .and_then(|mut statement| statement.query_row([], |_| Ok(())));
        if let Err(e) = checkpoint {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the checkpoint connection failed");
    }
}

/// On Linux a nice value belongs to one thread; elsewhere it would slow the whole process,
/// so the checkpointer keeps the default there.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = set_this_threads_nice(this_threads_nice() + NICER_BY) {
        tracing::debug!(error = %e, "cannot lower the checkpointer's priority");
    }
}

#[cfg(target_os = "linux")]
fn this_threads_nice() -> libc::c_int {
    // SAFETY: getpriority only reads its integer arguments; `who` 0 is the calling thread.
    // It cannot fail for the calling thread, so -1 is a nice value, not an error.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(target_os = "linux")]
fn set_this_threads_nice(nice: libc::c_int) -> std::io::Result<()> {
    // SAFETY: as above; the kernel caps the value at 19.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_checkpointer_thread_alone_runs_at_lower_priority() {
        let before = this_threads_nice();
        let lowered = std::thread::spawn(|| {
            lower_this_threads_priority();
            this_threads_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + NICER_BY).min(19));
        assert_eq!(
            this_threads_nice(),
            before,
            "the calling thread keeps its priority"
        );
    }
}
