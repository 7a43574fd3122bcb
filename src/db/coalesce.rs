//! Statements for requests that come together, made one.
//!
//! A shift starts and ends at the same minute for a whole district, and one statement per
//! request makes the database pay a round trip, a plan and (for a write) a commit and a WAL
//! flush for each: on two cores that queue, not the service, is what a crowd waits on. A
//! [`Coalescer`] lets requests that arrive while others are being served wait for the next free
//! slot and go in one set-based statement. A request that finds a slot free goes at once, alone:
//! waiting is never added when there is nothing to wait for.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Statements of one kind in flight at once. Postgres has two cores here: a few statements keep
/// both busy while one waits on its commit, and more would only queue inside the database.
pub const SLOTS: usize = 4;
/// Requests in one statement at most, so that one statement does not hold a slot for long.
pub const MAX_BATCH: usize = 128;

/// A set-based statement serving many requests.
pub trait Batch: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;
    /// Names the batch in metrics and logs.
    const NAME: &'static str;

    /// Whether the statement writes. One that does runs in a transaction of its own, bounded
    /// (see [`LOCK_WAIT`]), so that an error the database reports means nothing was written.
    const WRITES: bool;

    /// One output per item, in the items' order, from one statement on `conn`.
    fn run(
        &self,
        conn: &mut PgConnection,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, sqlx::Error>> + Send;
}

/// How long a writing batch waits for a row another transaction holds (a sync push, a conflict
/// being resolved, a session left open in `psql`), before it gives up and each of its requests
/// is served alone: one request's wait never becomes its whole batch's. Normal waits, on
/// another batch or a push, take milliseconds.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Runs `batch` on a connection of `db`: a writing batch in a transaction that gives up on a
/// held row after [`LOCK_WAIT`] and that Postgres cancels after `statement_limit`.
async fn run<B: Batch>(
    db: &PgPool,
    batch: &B,
    items: &[B::Item],
    statement_limit: Duration,
) -> Result<Vec<B::Output>, sqlx::Error> {
    if !B::WRITES {
        return batch.run(&mut *db.acquire().await?, items).await;
    }
    let mut tx = super::begin_limited(db, statement_limit, LOCK_WAIT).await?;
    let outputs = batch.run(&mut tx, items).await?;
    tx.commit().await?;
    Ok(outputs)
}

/// What a request hears from its batch.
#[derive(Debug)]
pub enum Shared<T> {
    /// Its own output.
    Served(T),
    /// Nothing of its batch was written (the database refused the statement, or it was never
    /// sent): the caller serves the request alone, where the error it meets is its own.
    Alone,
    /// Whether its batch was written is not known (the connection failed, or the statement
    /// outlived the time a request may take), or too little of the request's time was left to
    /// write it: the request is answered 503, not served again (which could do it twice).
    Unknown,
}

/// A request waiting: its item, when it came, and where its answer goes.
type Pending<B> = (
    <B as Batch>::Item,
    Instant,
    oneshot::Sender<Shared<<B as Batch>::Output>>,
);

/// The requests of one batch kind waiting for a slot, and the task that serves them.
pub struct Coalescer<B: Batch> {
    db: PgPool,
    batch: Arc<B>,
    /// A statement that runs longer gives its slot back and its requests hear `Unknown`.
    time_limit: Duration,
    /// Started on first use, on the runtime that serves the requests.
    sender: OnceLock<mpsc::UnboundedSender<Pending<B>>>,
    /// Requests queued and not yet taken into a batch.
    waiting: Arc<AtomicUsize>,
}

impl<B: Batch> Coalescer<B> {
    pub fn new(db: PgPool, batch: B, time_limit: Duration) -> Self {
        Self {
            db,
            batch: Arc::new(batch),
            time_limit,
            sender: OnceLock::new(),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many requests wait for a free slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Serves the item with the others waiting beside it. The queue only holds requests in
    /// flight, each of which waits here for its answer.
    pub async fn submit(&self, item: B::Item) -> Shared<B::Output> {
        let (reply, answer) = oneshot::channel();
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let (db, batch, waiting) = (self.db.clone(), self.batch.clone(), self.waiting.clone());
            tokio::spawn(dispatch(db, batch, self.time_limit, waiting, receiver));
            sender
        });
        // Counted before it can be taken, so that the count never goes below zero.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if sender.send((item, Instant::now(), reply)).is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Shared::Alone;
        }
        // A batch whose task ended without answering (a panic) may have run its statement.
        answer.await.unwrap_or(Shared::Unknown)
    }
}

/// Takes whatever has queued each time a slot is free, until the coalescer is gone.
async fn dispatch<B: Batch>(
    db: PgPool,
    batch: Arc<B>,
    time_limit: Duration,
    waiting: Arc<AtomicUsize>,
    mut queue: mpsc::UnboundedReceiver<Pending<B>>,
) {
    let slots = Arc::new(Semaphore::new(SLOTS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut pending = Vec::with_capacity(MAX_BATCH);
        let taken = queue.recv_many(&mut pending, MAX_BATCH).await;
        if taken == 0 {
            return;
        }
        waiting.fetch_sub(taken, Ordering::Relaxed);
        let (db, batch) = (db.clone(), batch.clone());
        tokio::spawn(async move {
            serve(&db, batch.as_ref(), time_limit, pending).await;
            drop(slot);
        });
    }
}

/// Runs one batch; every request hears its own output, or what became of its batch.
async fn serve<B: Batch>(
    db: &PgPool,
    batch: &B,
    time_limit: Duration,
    mut pending: Vec<Pending<B>>,
) {
    // A request that gave up while it waited (its client left, or it timed out and was answered
    // so) is not served: what its client was told stays true.
    pending.retain(|(_, _, reply)| !reply.is_closed());
    if pending.is_empty() {
        return;
    }
    let (late, pending, statement_limit) =
        split_late(pending, |(_, came, _)| *came, Instant::now(), time_limit);
    // Nothing is sent for these: they are about to be answered 503 (`Unknown` answers so).
    for (_, _, reply) in late {
        let _ = reply.send(Shared::Unknown);
    }
    if pending.is_empty() {
        return;
    }
    metrics::histogram!("coalesced_batch_size", "batch" => B::NAME).record(pending.len() as f64);
    let (items, replies): (Vec<B::Item>, Vec<_>) = pending
        .into_iter()
        .map(|(item, _, reply)| (item, reply))
        .unzip();
    let size = items.len();
    let every = |what: fn() -> Shared<B::Output>| (0..size).map(|_| what()).collect();
    let answers: Vec<Shared<B::Output>> = match tokio::time::timeout(
        time_limit,
        run(db, batch, &items, statement_limit),
    )
    .await
    {
        Ok(Ok(outputs)) if outputs.len() == items.len() => {
            outputs.into_iter().map(Shared::Served).collect()
        }
        Ok(Ok(outputs)) => {
            tracing::error!(
                batch = B::NAME,
                items = items.len(),
                outputs = outputs.len(),
                "a batch answered the wrong number of requests"
            );
            every(|| Shared::Unknown)
        }
        // Cancelled at its time limit: nothing was written, and too little time is left to
        // serve each request alone (which would not be bounded so): answered 503.
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("57014") => {
            tracing::warn!(batch = B::NAME, error = %e, size = items.len(), "a batch ran out of time and was cancelled");
            every(|| Shared::Unknown)
        }
        // A statement the database refused (a held row it gave up on) wrote nothing; one whose
        // session ended (PgBouncer reports a lost server connection as a database error) may
        // have committed.
        Ok(Err(sqlx::Error::Database(e)))
            if e.code()
                .is_some_and(|code| crate::error::session_lost(&code)) =>
        {
            tracing::error!(batch = B::NAME, error = %e, size = items.len(), "a batch's session ended while it ran");
            every(|| Shared::Unknown)
        }
        Ok(Err(
            error
            @ (sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed),
        )) => {
            tracing::warn!(batch = B::NAME, %error, size = items.len(), "a batch was not written; each of its requests is served alone");
            every(|| Shared::Alone)
        }
        Ok(Err(error)) => {
            tracing::error!(batch = B::NAME, %error, size = items.len(), "a batch failed after it was sent");
            every(|| Shared::Unknown)
        }
        Err(_) => {
            tracing::error!(
                batch = B::NAME,
                size = items.len(),
                ?time_limit,
                "a batch ran past the time a request may take"
            );
            every(|| Shared::Unknown)
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A request that gave up while its statement ran no longer listens; what the statement
        // wrote stands, as a statement of its own would have.
        let _ = reply.send(answer);
    }
}

/// Splits the requests of a batch into those with too little of their time left to be written
/// (less than [`LOCK_WAIT`], or a tenth of the time a request may take when that is shorter),
/// and the others, with the time their
/// statement may run: Postgres cancels it well before the oldest of them runs out of time (at
/// four fifths), so that a statement whose requests are answered 503 does not write their rows
/// afterwards. A request that waited long for a slot is answered alone, rather than cutting
/// short the statement of the newer ones that came with it.
fn split_late<P>(
    pending: Vec<P>,
    came: impl Fn(&P) -> Instant,
    now: Instant,
    time_limit: Duration,
) -> Split<P> {
    let left = |p: &P| (time_limit - time_limit / 5).saturating_sub(now - came(p));
    let (late, rest): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|p| left(p) < LOCK_WAIT.min(time_limit / 10));
    let statement_limit = rest.iter().map(left).min().unwrap_or(time_limit);
    (late, rest, statement_limit)
}

/// Requests too late to be written, the others, and the time their statement may run.
type Split<P> = (Vec<P>, Vec<P>, Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_waited_long_for_a_slot_does_not_cut_short_the_newer_ones_beside_it() {
        let now = Instant::now();
        let limit = Duration::from_secs(30);
        let came = |ago: u64| (ago, now - Duration::from_millis(ago));
        let split = |pending| split_late(pending, |(_, came): &(u64, Instant)| *came, now, limit);
        // Four fifths of 30 s is 24 s: the one that came 23.5 s ago has half a second of it
        // left, less than the second a statement is given at least; the one that came 22 s ago
        // has two, and bounds the statement of the rest.
        let (late, rest, statement_limit) =
            split(vec![came(1_000), came(23_500), came(2_000), came(22_000)]);
        let ids = |v: &[(u64, Instant)]| v.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        assert_eq!(ids(&late), [23_500]);
        assert_eq!(ids(&rest), [1_000, 2_000, 22_000]);
        assert_eq!(statement_limit, Duration::from_secs(2));
        // All fresh: the oldest bounds the statement.
        let (late, _, statement_limit) = split(vec![came(0), came(4_000)]);
        assert!(late.is_empty());
        assert_eq!(statement_limit, Duration::from_secs(20));
    }
}
