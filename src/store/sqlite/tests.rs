use super::*;
use crate::ledger::UsageQuery;
use crate::model::Usd;

pub(super) fn row(i: usize) -> Row {
    Row {
        ts_ms: 0,
        day: "2026-11-21".to_owned(),
        request_id: format!("r{i}"),
        key_id: "k".to_owned(),
        team: None,
        model: "auto".to_owned(),
        served_model: Some("sparkpix".to_owned()),
        n: 1,
        size: None,
        quality: "auto".to_owned(),
        cost: Usd(10_000),
        status: 200,
        error_code: None,
        latency_ms: 1,
        task_ids: String::new(),
        job_id: None,
        adjusts: None,
        tokens: None,
        call_id: None,
    }
}

#[tokio::test]
async fn recorded_rows_are_written_in_batches_and_flush_waits_for_them() {
    let store = Lite::open(None).unwrap();
    for i in 0..1_300 {
        store.record(row(i)).await;
    }
    store.flush().await;
    let rows = store.usage(UsageQuery::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].requests, rows[0].cost_micros), (1_300, 13_000_000));
}

/// Writes that never pause: a passive checkpoint never catches up with them, so the WAL
/// is restarted by the writer once it passes its limit, and its file stays near that size
/// instead of growing with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_under_steady_writes_is_restarted_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let wal = writer::Wal {
        restart_frames: 64,
        size_limit: 256 * 1024,
    };
    let store = Lite::open_with(Some(dir.path()), wal).unwrap();
    let restarts = || {
        store
            .restart
            .done
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut i = 0;
    // Bounded: without restarts this would end by the count, and fail below.
    while restarts() < 3 && i < 2_000_000 {
        store.record(row(i)).await;
        i += 1;
    }
    assert!(restarts() >= 3, "no WAL restart after {i} rows");
    store.flush().await;
    let wal_file = dir.path().join(format!("{DB_FILE}-wal"));
    let len = std::fs::metadata(wal_file).unwrap().len();
    // The limit, plus what one checkpoint period of writes adds at most (generous).
    assert!(len < 64 << 20, "the WAL is {len} bytes after {i} rows");
}

/// The disk falls behind (here: the writer cannot get the connection): the queue fills, the
/// writes past it wait instead of growing it, and once the writer is back nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_makes_writers_wait_and_drops_nothing() {
    let store = Lite::open(None).unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (holding, held) = std::sync::mpsc::channel::<()>();
    let conn = store.conn.clone();
    let holder = std::thread::spawn(move || {
        let _guard = conn.lock().unwrap();
        holding.send(()).unwrap();
        released.recv().unwrap();
    });
    held.recv().unwrap();
    let total = writer::QUEUE + 2_000;
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let (store, queued) = (store.clone(), queued.clone());
        tasks.spawn(async move {
            store.record(row(i)).await;
            queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
    while store.writes.capacity() > 0 {
        tokio::task::yield_now().await;
    }
    // Full: at most the queue and the group the writer holds are in; the rest wait.
    let in_queue = queued.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        in_queue <= writer::QUEUE + writer::GROUP,
        "{in_queue} of {total} queued"
    );
    release.send(()).unwrap();
    holder.join().unwrap();
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    store.flush().await;
    let rows = store.usage(UsageQuery::default()).await.unwrap();
    assert_eq!(rows[0].requests, total as u64);
}

mod job_tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::jobs;
    use super::*;
    use crate::model::Usd;
    use crate::store::jobs::{now_ms, Finish, JobState, NewJob};

    fn job(id: &str, callback: Option<&str>) -> NewJob {
        NewJob {
            id: id.to_owned(),
            key_id: "k".to_owned(),
            team: None,
            digest: "d".to_owned(),
            public_model: "auto".to_owned(),
            spec: "{}".to_owned(),
            request_id: "r".to_owned(),
            idempotency: None,
            callback_url: callback.map(str::to_owned),
        }
    }

    fn finish(id: &str, state: JobState) -> Finish {
        let mut row = super::row(0);
        row.job_id = Some(id.to_owned());
        row.cost = Usd::ZERO;
        Finish {
            state,
            status: 200,
            cost_micros: 0,
            images: None,
            error: None,
            row,
        }
    }

    /// Writes a job and its end in one transaction.
    async fn insert_finished(store: &Lite, new: NewJob, end: Finish) {
        store
            .write(Box::new(move |tx| {
                jobs::insert(tx, &new)?;
                jobs::finish(tx, &new.id, &end)
            }))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_write_that_fails_is_tried_again_and_a_refused_one_is_reported() {
        let store = Lite::open(None).unwrap();
        let tries = Arc::new(AtomicU32::new(0));
        let seen = tries.clone();
        // Fails once as the disk would (not a constraint), then succeeds: never dropped.
        store
            .write(Box::new(move |tx| {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                        None,
                    )));
                }
                jobs::insert(tx, &job("j1", None))
            }))
            .await
            .unwrap();
        assert!(tries.load(Ordering::SeqCst) >= 2);
        // The same job again breaks the primary key: refused, and the caller is told.
        let again = store.write(Box::new(|tx| jobs::insert(tx, &job("j1", None))));
        assert!(again.await.is_err());
        // One ledger row per job: a second end is refused.
        let end = |tx: &Transaction<'_>| jobs::finish(tx, "j1", &finish("j1", JobState::Completed));
        store.write(Box::new(end)).await.unwrap();
        assert!(store.write(Box::new(end)).await.is_err());
    }

    /// A new job written with its first attempt and create (one insert, `apply_all`) leaves the
    /// same rows as the three writes one after the other.
    #[tokio::test]
    async fn a_job_written_with_its_first_create_is_the_same_as_step_by_step() {
        let store = Lite::open(None).unwrap();
        let steps = |id: &str| {
            vec![
                Op::InsertJob(std::sync::Arc::new(job(id, None))),
                Op::Attempt {
                    job: id.to_owned(),
                    epoch: None,
                    attempt: 1,
                    model: "gpt-image-2-all".to_owned(),
                    price_micros: 40_000,
                    per_call: true,
                    reserved_micros: 80_000,
                },
                Op::Submitting {
                    job: id.to_owned(),
                    epoch: None,
                    seq: 0,
                    attempt: 1,
                    model: "gpt-image-2-all".to_owned(),
                },
            ]
        };
        store.write_ops(steps("folded")).await.unwrap();
        for op in steps("stepwise") {
            store.write_ops(vec![op]).await.unwrap();
        }
        let rows = store
            .call(|c| {
                let mut stmt = c.prepare(
                    "SELECT j.state, j.model, j.attempt, j.price_micros, j.per_call,
                        j.reserved_micros, j.spec, c.seq, c.attempt, c.model, c.state
                     FROM jobs j JOIN job_calls c ON c.job_id = j.id ORDER BY j.id",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        (0..11)
                            .map(|i| r.get::<_, rusqlite::types::Value>(i))
                            .collect::<Result<Vec<_>, _>>()
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], rows[1]);
        assert_eq!(
            rows[0][0],
            rusqlite::types::Value::Text("submitting".into())
        );
        // A duplicate create of the same job is still refused as a whole.
        assert!(store.write_ops(steps("folded")).await.is_err());
    }

    /// A job's large images are written into its row piece by piece (the base64 from the buffer
    /// it arrived in), short ones bound as text; both read back as the JSON they make, and a job
    /// ended without images keeps none.
    #[tokio::test]
    async fn images_written_in_pieces_read_back_whole() {
        let store = Lite::open(None).unwrap();
        let b64 = bytes::Bytes::from("iVBORw0K".repeat(40_000));
        let mut w = crate::model::JsonWriter::new();
        w.raw("[{\"b64_json\":")
            .string(b64.clone())
            .raw("},{\"url\":")
            .value("https://files.example/a.png")
            .raw("}]");
        let text = w.finish();
        assert!(text.parts().len() >= 3, "the base64 is a piece of its own");
        let mut short = crate::model::JsonWriter::new();
        short
            .raw("[{\"url\":")
            .value("https://files.example/b.png")
            .raw("}]");
        for (id, images) in [
            ("with", Some(text)),
            ("short", Some(short.finish())),
            ("without", None),
        ] {
            let mut end = finish(id, JobState::Completed);
            end.images = images;
            insert_finished(&store, job(id, None), end).await;
        }
        let got = store.job("with".to_owned()).await.unwrap().unwrap();
        assert_eq!(
            got.images,
            Some(serde_json::json!([
                {"b64_json": std::str::from_utf8(&b64).unwrap()},
                {"url": "https://files.example/a.png"},
            ]))
        );
        let short = store.job("short".to_owned()).await.unwrap().unwrap();
        assert_eq!(
            short.images,
            Some(serde_json::json!([{"url": "https://files.example/b.png"}]))
        );
        let none = store.job("without".to_owned()).await.unwrap().unwrap();
        assert_eq!(none.images, None);
    }

    #[tokio::test]
    async fn purge_forgets_old_finished_jobs_but_not_unknown_ones_or_pending_webhooks() {
        let store = Lite::open(None).unwrap();
        for (id, callback, state) in [
            ("done", None, JobState::Completed),
            ("hooked", Some("https://example.com/h"), JobState::Completed),
            ("unknown", None, JobState::Unknown),
        ] {
            insert_finished(&store, job(id, callback), finish(id, state)).await;
        }
        let purged = store.call(|c| jobs::purge(c, now_ms() + 1)).await.unwrap();
        assert_eq!(purged, 1);
        let left = store.call(|c| jobs::list(c, None, 10, None)).await.unwrap();
        let mut ids: Vec<String> = left.into_iter().map(|j| j.id).collect();
        ids.sort();
        assert_eq!(ids, ["hooked", "unknown"]);
    }
}
