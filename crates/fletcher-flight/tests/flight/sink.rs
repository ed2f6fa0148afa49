//! The sink client against a recording Flight server, alone and behind
//! DoPut.

use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::FlightDescriptor;
use fletcher_engine::Metrics;
use fletcher_flight::{rows_to_batch, start_sink, BreakerState, SinkConfig, SinkError, SinkHandle};
use futures::TryStreamExt;
use tokio::net::TcpListener;
use tonic::Code;

use crate::common::*;

/// A loopback port nothing listens on, and the address to find it at.
async fn free_port() -> (u16, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, format!("grpc://127.0.0.1:{port}"))
}

fn fast_config(url: &str, buffer_rows: usize, batch_rows: usize) -> SinkConfig {
    SinkConfig {
        buffer_rows,
        batch_rows,
        max_retries: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        breaker_cooldown: Duration::from_millis(200),
        flush_timeout: Duration::from_millis(10),
        rpc_timeout: Duration::from_secs(5),
        ..SinkConfig::new(url, "vectors")
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn id_batch(first: i64, rows: usize) -> RecordBatch {
    let texts: Vec<String> = (0..rows)
        .map(|i| format!("t{}", first + i as i64))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    id_text_batch(first, &refs)
}

#[tokio::test]
async fn submitted_rows_reach_the_sink_in_batches_under_their_dataset() {
    let sink = RecordingSink::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    let _stop = sink.serve(listener);
    let metrics = Metrics::new();
    let handle = start_sink(fast_config(&url, 1000, 64), &metrics).unwrap();
    handle.submit(id_batch(0, 100)).unwrap();
    handle.submit_to("other", id_batch(100, 10)).unwrap();
    let texts = vec!["x".to_owned(), "y".to_owned()];
    handle
        .submit(rows_to_batch(&texts, &[vec![1.0, 2.0], vec![3.0, 4.0]]).unwrap())
        .unwrap();
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.sent, report.unsent), (112, 0));
    assert_eq!(sink.ids(), (0..110).collect::<Vec<_>>());
    let puts = sink.puts.lock().unwrap().clone();
    assert!(puts
        .iter()
        .all(|p| p.batches.iter().map(RecordBatch::num_rows).sum::<usize>() <= 64));
    let paths: Vec<Vec<String>> = puts.iter().map(|p| p.path.clone()).collect();
    assert_eq!(paths.iter().filter(|p| *p == &["other"]).count(), 1);
    assert_eq!(
        paths.iter().filter(|p| *p == &["vectors"]).count(),
        puts.len() - 1
    );
    let last = &puts[puts.len() - 1].batches[0];
    assert_eq!(vectors(last), [vec![1.0, 2.0], vec![3.0, 4.0]]);
    assert!(metrics.render().contains("fletcher_sink_rows_buffered 0"));
}

#[tokio::test]
async fn a_full_buffer_refuses_rows_and_keeps_the_ones_it_took() {
    let (port, url) = free_port().await;
    let metrics = Metrics::new();
    let handle = start_sink(fast_config(&url, 10, 4), &metrics).unwrap();
    handle.submit(id_batch(0, 8)).unwrap();
    let err = handle.submit(id_batch(8, 5)).unwrap_err();
    assert!(
        matches!(
            err,
            SinkError::Full {
                rows: 5,
                buffered: 8,
                capacity: 10
            }
        ),
        "{err}"
    );
    assert!(matches!(
        handle.submit(id_batch(8, 11)),
        Err(SinkError::TooLarge { .. })
    ));
    handle.submit(id_batch(8, 2)).unwrap();
    assert_eq!(handle.room(), 0);
    wait_until("the breaker opens", || {
        handle.status().breaker != BreakerState::Closed
    })
    .await;
    assert!(metrics.sink_errors_total.get() >= 3);

    let sink = RecordingSink::default();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _stop = sink.serve(listener);
    wait_until("the rows arrive", || handle.status().sent_rows == 10).await;
    assert_eq!(sink.ids(), (0..10).collect::<Vec<_>>());
    assert_eq!(handle.room(), 10);
    assert_eq!(handle.status().breaker, BreakerState::Closed);
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.sent, report.unsent), (10, 0));
}

#[tokio::test]
async fn refused_calls_are_retried_until_the_sink_takes_them() {
    let sink = RecordingSink::default();
    sink.failing.store(true, Ordering::SeqCst);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    let _stop = sink.serve(listener);
    let metrics = Metrics::new();
    let handle = start_sink(fast_config(&url, 1000, 16), &metrics).unwrap();
    for first in (0..100).step_by(20) {
        handle.submit(id_batch(first, 20)).unwrap();
    }
    wait_until("calls fail", || handle.status().failed_calls >= 4).await;
    assert_eq!(handle.status().buffered_rows, 100);
    sink.failing.store(false, Ordering::SeqCst);
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.sent, report.unsent), (100, 0));
    assert_eq!(sink.ids(), (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn shutdown_with_the_sink_down_reports_unsent_rows_in_time() {
    let (_, url) = free_port().await;
    let handle = start_sink(fast_config(&url, 100, 10), &Metrics::new()).unwrap();
    handle.submit(id_batch(0, 30)).unwrap();
    let clone = handle.clone();
    let started = std::time::Instant::now();
    let report = handle.shutdown(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((report.sent, report.unsent), (0, 30));
    assert!(matches!(
        clone.submit(id_batch(30, 1)),
        Err(SinkError::Closed)
    ));
}

async fn put(
    served: &Served,
    dataset: &str,
    batches: Vec<RecordBatch>,
) -> Result<serde_json::Value, tonic::Status> {
    let mut client = client(served.addr).await;
    let descriptor = FlightDescriptor::new_path(vec![dataset.to_owned()]);
    let outcome = async {
        let answers: Vec<_> = client
            .do_put(flight_data(Some(descriptor), batches))
            .await?
            .try_collect()
            .await?;
        Ok::<_, FlightError>(answers)
    };
    match outcome.await {
        Ok(answers) => {
            assert_eq!(answers.len(), 1);
            Ok(serde_json::from_slice(&answers[0].app_metadata).unwrap())
        }
        Err(FlightError::Tonic(status)) => Err(*status),
        Err(other) => panic!("{other}"),
    }
}

async fn sink_handle(url: &str, buffer_rows: usize, metrics: &Metrics) -> SinkHandle {
    start_sink(fast_config(url, buffer_rows, 4096), metrics).unwrap()
}

#[tokio::test]
async fn do_put_embeds_rows_and_forwards_them_with_their_columns() {
    let sink = RecordingSink::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    let _stop = sink.serve(listener);
    let engine = engine();
    let handle = sink_handle(&url, 1000, engine.metrics()).await;
    let served = serve(engine.clone(), Some(handle.clone())).await;
    let answer = put(&served, "docs", vec![id_batch(0, 5), id_batch(5, 7)])
        .await
        .unwrap();
    assert_eq!(answer, serde_json::json!({"rows": 12}));
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.sent, report.unsent), (12, 0));
    assert_eq!(sink.ids(), (0..12).collect::<Vec<_>>());
    let puts = sink.puts.lock().unwrap().clone();
    assert!(puts.iter().all(|p| p.path == ["docs"]));
    let rows: Vec<RecordBatch> = puts.iter().flat_map(|p| p.batches.clone()).collect();
    let names: Vec<String> = rows[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "text", "embedding"]);
    let got: Vec<Vec<f32>> = rows.iter().flat_map(vectors).collect();
    let texts: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let expected = engine.embedder().embed(&texts).unwrap();
    assert!(got
        .iter()
        .zip(&expected)
        .all(|(g, e)| max_abs_diff(g, e) <= 1e-5));
}

#[tokio::test]
async fn do_put_into_a_full_buffer_is_resource_exhausted() {
    let (port, url) = free_port().await;
    let engine = engine();
    let metrics = Metrics::new();
    let handle = sink_handle(&url, 10, &metrics).await;
    let served = serve(engine, Some(handle.clone())).await;
    let err = put(&served, "docs", vec![id_batch(0, 8), id_batch(8, 8)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("8 rows of this call were accepted"),
        "{}",
        err.message()
    );
    assert_eq!(handle.status().buffered_rows, 8);

    let sink = RecordingSink::default();
    let _stop = sink.serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.sent, report.unsent), (8, 0));
    assert_eq!(sink.ids(), (0..8).collect::<Vec<_>>());
}
