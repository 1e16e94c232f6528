//! Job records and the job event log against both databases.

mod common;

use std::path::PathBuf;

use grokforge_storage::{Database, JobFilter, JobRepository, JobStatus, NewJob, StorageError};
use uuid::Uuid;

on_both!(
    jobs_round_trip_and_list_newest_first,
    concurrent_appends_get_sequence_numbers_without_gaps,
);

fn job(phase: &str, priority: i64) -> NewJob {
    NewJob {
        phase: phase.into(),
        spec: serde_json::json!({"variants": 3, "steps": 1000}),
        priority,
        max_attempts: 3,
    }
}

async fn jobs_round_trip_and_list_newest_first(db: Database, _artifacts: PathBuf) {
    let jobs = JobRepository::new(db);
    let first = jobs.insert(job("cognate", 0)).await.unwrap();
    let second = jobs.insert(job("evomerge", 5)).await.unwrap();
    assert_eq!(first.status, JobStatus::Queued);
    assert_eq!(jobs.get(first.id).await.unwrap(), first);

    let all = jobs.list(&JobFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|j| j.id).collect::<Vec<_>>(),
        [second.id, first.id]
    );
    let cognate = jobs
        .list(&JobFilter {
            phase: Some("cognate".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(cognate, vec![first.clone()]);
    let queued = jobs
        .list(&JobFilter {
            status: Some(JobStatus::Queued),
            limit: Some(1),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert!(
        jobs.list(&JobFilter {
            status: Some(JobStatus::Running),
            ..JobFilter::default()
        })
        .await
        .unwrap()
        .is_empty()
    );

    let unknown = Uuid::now_v7();
    assert!(matches!(
        jobs.get(unknown).await,
        Err(StorageError::JobNotFound { id }) if id == unknown
    ));
    assert!(matches!(
        jobs.insert(NewJob {
            max_attempts: 0,
            ..job("cognate", 0)
        })
        .await,
        Err(StorageError::Invalid { .. })
    ));
}

async fn concurrent_appends_get_sequence_numbers_without_gaps(db: Database, _artifacts: PathBuf) {
    let jobs = JobRepository::new(db);
    let job = jobs.insert(job("cognate", 0)).await.unwrap();
    let appends: Vec<_> = (0..10)
        .map(|i| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                jobs.append_event(job.id, |seq| {
                    serde_json::json!({"seq": seq, "event": {"type": "training_progress", "n": i}})
                })
                .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for append in appends {
        seqs.push(append.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());

    let since_3 = jobs.events_since(job.id, 3, 100).await.unwrap();
    assert_eq!(
        since_3.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (4..=10).collect::<Vec<u64>>()
    );
    assert!(since_3.iter().all(|e| e.envelope["seq"] == e.seq));
    assert_eq!(jobs.events_since(job.id, 0, 2).await.unwrap().len(), 2);
    assert!(jobs.events_since(job.id, 10, 100).await.unwrap().is_empty());
    assert_eq!(jobs.get(job.id).await.unwrap().last_event_seq, 10);

    let unknown = Uuid::now_v7();
    assert!(matches!(
        jobs.append_event(unknown, |_| serde_json::json!({})).await,
        Err(StorageError::JobNotFound { .. })
    ));
}
