//! Running a distributed query again when a worker fails before the
//! query has sent a row: nothing reached the client, so running it again
//! (after the coordinator has checked its workers) cannot duplicate rows.
//! A failure after the first batch is the client's to see.

use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use futures::future::BoxFuture;
use tracing::warn;

static RUN_AGAIN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Queries run again after a worker failed, since the process started.
pub fn runs_again() -> u64 {
    RUN_AGAIN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Starts the query again: a new stream, from a new plan.
pub type Again = Box<dyn FnOnce() -> BoxFuture<'static, Result<SendableRecordBatchStream>> + Send>;

/// Whether `e` is a worker that failed or went away (not a table's
/// storage, not an error in the query).
pub fn worker_failed(e: &DataFusionError) -> bool {
    crate::error::is_remote_failure(e)
        && crate::error::error_kind(e) == crate::error::ErrorKind::Unavailable
}

/// `first`, or — when its first item is an error `retry_on` accepts —
/// the stream `again` makes, once.
pub fn before_first_batch(
    first: SendableRecordBatchStream,
    again: Again,
    retry_on: fn(&DataFusionError) -> bool,
) -> SendableRecordBatchStream {
    let schema = first.schema();
    struct State {
        stream: SendableRecordBatchStream,
        again: Option<Again>,
        retry_on: fn(&DataFusionError) -> bool,
    }
    let state = State {
        stream: first,
        again: Some(again),
        retry_on,
    };
    let empty = std::sync::Arc::clone(&schema);
    let stream = futures::stream::unfold(state, move |mut st| {
        let empty = std::sync::Arc::clone(&empty);
        async move {
            loop {
                match st.stream.next().await {
                    Some(Err(e)) if st.again.is_some() && (st.retry_on)(&e) => {
                        let Some(again) = st.again.take() else {
                            return Some((Err(e), st));
                        };
                        warn!(error = %e, "a worker failed before the query sent a row; the query runs again on the workers that answer");
                        RUN_AGAIN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // The failed run ends first: its memory and its tasks
                        // are released before the second one starts.
                        st.stream =
                            Box::pin(datafusion::physical_plan::EmptyRecordBatchStream::new(
                                std::sync::Arc::clone(&empty),
                            ));
                        match again().await {
                            Ok(stream) => st.stream = stream,
                            Err(e2) => return Some((Err(e2), st)),
                        }
                    }
                    Some(item) => {
                        // A batch was sent, or the error is the query's own.
                        st.again = None;
                        return Some((item, st));
                    }
                    None => return None,
                }
            }
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn batch(v: i32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![v]))]).unwrap()
    }

    fn stream(items: Vec<Result<RecordBatch>>) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(
            batch(0).schema(),
            futures::stream::iter(items),
        ))
    }

    fn gone() -> DataFusionError {
        DataFusionError::Execution("worker gone".into())
    }

    fn is_gone(e: &DataFusionError) -> bool {
        e.to_string().contains("worker gone")
    }

    async fn values(s: SendableRecordBatchStream) -> Vec<std::result::Result<i32, String>> {
        s.map(|r| {
            r.map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .value(0)
            })
            .map_err(|e| e.to_string())
        })
        .collect()
        .await
    }

    fn again(runs: &Arc<AtomicUsize>, items: Vec<Result<RecordBatch>>) -> Again {
        let runs = Arc::clone(runs);
        Box::new(move || {
            runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(stream(items)) })
        })
    }

    #[tokio::test]
    async fn a_failure_before_the_first_batch_runs_the_query_again_once() {
        let runs = Arc::new(AtomicUsize::new(0));
        let s = before_first_batch(
            stream(vec![Err(gone())]),
            again(&runs, vec![Ok(batch(1)), Ok(batch(2))]),
            is_gone,
        );
        assert_eq!(values(s).await, vec![Ok(1), Ok(2)]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The second run fails the same way: the error, no third run.
        let runs = Arc::new(AtomicUsize::new(0));
        let s = before_first_batch(
            stream(vec![Err(gone())]),
            again(&runs, vec![Err(gone())]),
            is_gone,
        );
        let got = values(s).await;
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().unwrap_err().contains("worker gone"));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn after_a_batch_or_on_another_error_nothing_runs_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let s = before_first_batch(
            stream(vec![Ok(batch(1)), Err(gone())]),
            again(&runs, vec![Ok(batch(9))]),
            is_gone,
        );
        let got = values(s).await;
        assert_eq!(got[0], Ok(1));
        assert!(got[1].as_ref().unwrap_err().contains("worker gone"));
        let s = before_first_batch(
            stream(vec![Err(DataFusionError::Plan("bad query".into()))]),
            again(&runs, vec![Ok(batch(9))]),
            is_gone,
        );
        assert!(
            values(s).await[0]
                .as_ref()
                .unwrap_err()
                .contains("bad query")
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }
}
