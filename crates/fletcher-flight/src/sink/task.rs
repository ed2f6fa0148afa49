//! The sink's background task: takes the oldest buffered rows, puts them to
//! the sink, and drops them from the buffer once the sink acknowledged
//! them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor, PutResult};
use futures::{stream, TryStreamExt};
use tonic::transport::Channel;

use super::{BreakerState, Shared, SinkConfig};

/// Rows of one dataset and schema, sent in one call.
#[derive(Debug)]
struct Group {
    dataset: Arc<str>,
    batches: Vec<RecordBatch>,
    rows: usize,
}

/// What the task does next.
#[derive(Debug)]
enum Next {
    Send(Group),
    /// Nothing is due; wait for new rows or until the given instant.
    Wait(Option<Instant>),
    /// Shutting down and nothing is left.
    Done,
}

/// The task's state: the client and the retry timings.
#[derive(Debug)]
pub(super) struct Sender {
    shared: Arc<Shared>,
    client: FlightClient,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    breaker_cooldown: Duration,
    flush_timeout: Duration,
    rpc_timeout: Duration,
}

impl Sender {
    pub(super) fn new(shared: Arc<Shared>, channel: Channel, config: &SinkConfig) -> Self {
        Self {
            shared,
            client: FlightClient::new(channel),
            max_retries: config.max_retries,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
            breaker_cooldown: config.breaker_cooldown,
            flush_timeout: config.flush_timeout,
            rpc_timeout: config.rpc_timeout,
        }
    }

    /// Sends until shut down with an empty buffer.
    pub(super) async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let group = match self.next() {
                Next::Send(group) => group,
                Next::Done => return,
                Next::Wait(until) => {
                    let notified = self.shared.wake.notified();
                    match until {
                        Some(until) => {
                            tokio::select! {
                                () = notified => {}
                                () = tokio::time::sleep_until(until.into()) => {}
                            }
                        }
                        None => notified.await,
                    }
                    continue;
                }
            };
            match self.put(&group).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(url = %self.shared.url, failures, "the sink answers again");
                    }
                    failures = 0;
                    self.shared.set_breaker(BreakerState::Closed);
                    self.shared.acknowledge(group.batches.len(), group.rows);
                }
                Err(reason) => {
                    failures = failures.saturating_add(1);
                    self.shared.errors.inc();
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    let pause = if failures > self.max_retries {
                        self.shared.set_breaker(BreakerState::Open);
                        tracing::error!(
                            url = %self.shared.url,
                            rows = group.rows,
                            failures,
                            %reason,
                            "sink call failed; circuit breaker open for {:?}",
                            self.breaker_cooldown
                        );
                        self.breaker_cooldown
                    } else {
                        let pause = self.backoff(failures);
                        tracing::warn!(
                            url = %self.shared.url,
                            rows = group.rows,
                            failures,
                            %reason,
                            "sink call failed; retrying in {pause:?}"
                        );
                        pause
                    };
                    tokio::time::sleep(pause).await;
                    if failures > self.max_retries {
                        self.shared.set_breaker(BreakerState::HalfOpen);
                    }
                }
            }
        }
    }

    /// The pause after `failures` failed calls in a row.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The oldest rows when a full batch is buffered, the oldest row has
    /// waited `flush_timeout`, or the sink is shutting down.
    fn next(&self) -> Next {
        let buffer = self.shared.buffer();
        let Some(first) = buffer.entries.front() else {
            return if buffer.closing {
                Next::Done
            } else {
                Next::Wait(None)
            };
        };
        let due = first.queued + self.flush_timeout;
        if !buffer.closing && buffer.rows < self.shared.batch_rows && Instant::now() < due {
            return Next::Wait(Some(due));
        }
        let schema = first.batch.schema();
        let mut group = Group {
            dataset: first.dataset.clone(),
            batches: Vec::new(),
            rows: 0,
        };
        for entry in &buffer.entries {
            let rows = entry.batch.num_rows();
            let fits = group.batches.is_empty() || group.rows + rows <= self.shared.batch_rows;
            if !fits || entry.dataset != group.dataset || entry.batch.schema() != schema {
                break;
            }
            group.rows += rows;
            group.batches.push(entry.batch.clone());
        }
        Next::Send(group)
    }

    /// Puts `group` to the sink; `Ok` once the sink ended the call with OK.
    async fn put(&mut self, group: &Group) -> Result<(), String> {
        let descriptor = FlightDescriptor::new_path(vec![group.dataset.to_string()]);
        let batches = group.batches.clone().into_iter().map(Ok);
        let data = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(stream::iter(batches));
        let client = &mut self.client;
        let call = async move {
            let answers = client.do_put(data).await?;
            answers.try_collect::<Vec<PutResult>>().await
        };
        match tokio::time::timeout(self.rpc_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.rpc_timeout)),
        }
    }
}
