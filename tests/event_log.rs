//! A job's event log longer than one page, replayed from the start: over the WebSocket
//! (`since=0`) every event arrives once, in order, and the confirmation counts them; over REST
//! a client reads it page by page with `limit` and `since`. The log is written straight into the
//! node's SQLite file before the node starts, as a long job would have left it.

mod common;

use std::time::Duration;

use common::{WsClient, client, start};
use grokforge_actors::events::{Event, EventEnvelope};
use grokforge_actors::storage::jobs::{JobRepository, NewJob};
use grokforge_actors::storage::{Database, DatabaseTarget};
use serde_json::Value;
use uuid::Uuid;

/// More than two WebSocket replay pages and more than one REST page at the largest `limit`.
const EVENTS: u64 = 2_345;

async fn write_log(data_dir: &std::path::Path) -> Uuid {
    let database = Database::connect(
        &DatabaseTarget::Sqlite(data_dir.join("grokforge.sqlite3")),
        2,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let jobs = JobRepository::new(database.clone());
    let job = jobs
        .insert(NewJob {
            phase: "cognate".into(),
            spec: serde_json::json!({"steps": EVENTS}),
            priority: 0,
            max_attempts: 1,
        })
        .await
        .unwrap();
    // Ended, so the node does not run it.
    jobs.request_cancel(job.id).await.unwrap();
    for step in 1..=EVENTS {
        jobs.append_event(job.id, |seq| {
            let event = Event::TrainingProgress {
                job_id: job.id,
                variant: 0,
                step,
                total_steps: EVENTS,
                loss: 1.0 / step as f64,
                accuracy: None,
                val_loss: None,
                val_accuracy: None,
                learning_rate: 1e-3,
                steps_per_second: 100.0,
            };
            serde_json::to_value(
                EventEnvelope::new("writer", "training_service", event).with_seq(seq),
            )
            .unwrap()
        })
        .await
        .unwrap();
    }
    database.close().await;
    job.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_longer_than_a_page_is_replayed_whole_and_in_order() {
    let data = tempfile::tempdir().unwrap();
    let job_id = write_log(data.path()).await;
    let server = start(data.path());
    let base = &server.base;

    for since in [0, 1_500] {
        let mut ws = WsClient::connect(base).await;
        let confirmed = ws.subscribe(&format!("job:{job_id}"), Some(since)).await;
        assert_eq!(confirmed["replayed"], EVENTS - since, "{confirmed}");
        let mut expected = since + 1;
        while expected <= EVENTS {
            let frame = ws.next_json(Duration::from_secs(20)).await;
            assert_eq!(frame["type"], "training_progress", "{frame}");
            assert_eq!(frame["seq"], expected, "out of order");
            expected += 1;
        }
        // Nothing after the end: a ping is answered next.
        ws.send_json(serde_json::json!({"type": "ping"})).await;
        let next = ws.next_json(Duration::from_secs(5)).await;
        assert_eq!(next["type"], "pong", "{next}");
    }

    // REST: pages of `limit`, continued from the last `seq`.
    let mut since = 0;
    let mut pages = 0;
    loop {
        let page: Vec<Value> = client()
            .get(format!(
                "{base}/jobs/{job_id}/events?since={since}&limit=1000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for event in &page {
            since += 1;
            assert_eq!(event["seq"], since);
        }
        if page.len() < 1000 {
            break;
        }
    }
    assert_eq!((since, pages), (EVENTS, 3));
    let too_many = client()
        .get(format!("{base}/jobs/{job_id}/events?limit=10001"))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 422);
    let default: Vec<Value> = client()
        .get(format!("{base}/jobs/{job_id}/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(default.len(), 1000, "the default page");
}
