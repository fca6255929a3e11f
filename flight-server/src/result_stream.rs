//! [`ResultStream`]: a running statement's batches as a `Stream`, in wire
//! form, under its time and result limits.
//!
//! What the statement holds (its DataFusion stream, memory, queue slot and
//! audit record) lives in a [`QueryControl`] shared with the cancel registry
//! and the time-limit watchdog, so a statement can be stopped from outside
//! even while its client is not reading: the query is taken out, its memory
//! and slot return at once, and the client, when it reads again, gets an
//! error saying why — never a result that merely looks complete.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, ByteView, GenericByteViewArray, RecordBatch, StringArray,
    StringViewArray,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::ByteViewType;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::task::AtomicWaker;
use futures::{Future, Stream, StreamExt};
use meshq_engine::PhysicalQuery;
use tracing::debug;

use crate::admission::Permit;
use crate::error::{Error, Result};
use crate::query::QueryId;
use crate::trace::QueryTrace;

/// What a running statement holds; dropping it stops DataFusion's tasks,
/// frees the statement's memory and slot, and writes its audit record.
pub(crate) struct RunningQuery {
    pub(crate) inner: SendableRecordBatchStream,
    pub(crate) query: PhysicalQuery,
    pub(crate) trace: QueryTrace,
    pub(crate) _permit: Permit,
}

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

/// Why a statement was stopped from outside.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// `CancelFlightInfo`.
    Cancelled,
    /// Its time limit passed.
    TimedOut,
}

/// A running statement, shared by its stream and whoever may stop it.
pub(crate) struct QueryControl {
    id: QueryId,
    time_limit: Option<Duration>,
    running: Mutex<Option<RunningQuery>>,
    end: AtomicU8,
    waker: AtomicWaker,
}

impl QueryControl {
    pub(crate) fn new(id: QueryId, time_limit: Option<Duration>, query: RunningQuery) -> Self {
        Self {
            id,
            time_limit,
            running: Mutex::new(Some(query)),
            end: AtomicU8::new(RUNNING),
            waker: AtomicWaker::new(),
        }
    }

    fn error(&self, why: u8) -> Option<Error> {
        match why {
            CANCELLED => Some(Error::Cancelled(self.id)),
            TIMED_OUT => Some(Error::TimedOut {
                id: self.id,
                limit: self.time_limit.unwrap_or_default(),
            }),
            _ => None,
        }
    }

    /// Stops the statement. A stream being polled right now drops it when
    /// the poll returns; otherwise it is dropped here.
    pub(crate) fn stop(&self, why: Stop) {
        let code = match why {
            Stop::Cancelled => CANCELLED,
            Stop::TimedOut => TIMED_OUT,
        };
        if self
            .end
            .compare_exchange(RUNNING, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        if let Some(mut slot) = self.running.try_lock() {
            self.take(&mut slot, code);
        }
        self.waker.wake();
    }

    /// Takes the query out, recording why it ended.
    fn take(&self, slot: &mut Option<RunningQuery>, code: u8) {
        if let Some(mut q) = slot.take() {
            q.trace.dropped = self.error(code);
        }
    }
}

/// Maps a DataFusion error of this statement to the server's error.
pub(crate) type ErrorMap = Box<dyn Fn(&DataFusionError) -> Error + Send + Sync>;

/// Result limits of one statement.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ResultLimits {
    pub(crate) max_rows: Option<u64>,
    pub(crate) max_bytes: Option<u64>,
}

/// A statement's batches, cast to the wire schema, limited.
pub struct ResultStream {
    control: Arc<QueryControl>,
    schema: SchemaRef,
    limits: ResultLimits,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    errors: ErrorMap,
    done: bool,
    _watchdog: Option<SpawnedTask<()>>,
    _registration: Option<Box<dyn Send + Sync>>,
}

impl ResultStream {
    /// Streams `control`'s statement in `schema` until `deadline`.
    pub(crate) fn new(
        control: Arc<QueryControl>,
        schema: SchemaRef,
        limits: ResultLimits,
        deadline: Option<tokio::time::Instant>,
        errors: ErrorMap,
    ) -> Self {
        // The time limit holds even when the client stops reading (then
        // the stream is not polled and cannot notice it).
        let watchdog = deadline.map(|at| {
            let control = Arc::clone(&control);
            SpawnedTask::spawn(async move {
                tokio::time::sleep_until(at).await;
                control.stop(Stop::TimedOut);
            })
        });
        Self {
            control,
            schema,
            limits,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            errors,
            done: false,
            _watchdog: watchdog,
            _registration: None,
        }
    }

    /// Keeps `registration` (e.g. with the cancel registry) as long as the
    /// stream lives.
    pub(crate) fn with_registration(mut self, registration: Box<dyn Send + Sync>) -> Self {
        self._registration = Some(registration);
        self
    }

    /// The wire schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Every batch, for statements whose small result travels in a ticket.
    pub async fn collect_all(mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        while let Some(b) = self.next().await {
            out.push(b?);
        }
        Ok(out)
    }

    fn fail(
        &mut self,
        slot: &mut Option<RunningQuery>,
        error: Error,
    ) -> Poll<Option<Result<RecordBatch>>> {
        if let Some(mut q) = slot.take() {
            q.trace.finish(Err(&error));
        }
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }
}

/// Arrow bytes of a batch, counting only the slices it uses.
pub(crate) fn batch_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
        .sum()
}

/// Casts a batch to the wire schema (views → plain types), and compacts
/// the view columns a client receives as views.
fn cast_batch(batch: &RecordBatch, target: &SchemaRef) -> arrow::error::Result<RecordBatch> {
    if batch.schema().fields() == target.fields() {
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8View => compact(c, c.as_string_view()),
                DataType::BinaryView => compact(c, c.as_binary_view()),
                _ => Arc::clone(c),
            })
            .collect();
        let unchanged = columns
            .iter()
            .zip(batch.columns())
            .all(|(sent, read)| Arc::ptr_eq(sent, read));
        let batch = if unchanged {
            batch.clone()
        } else {
            RecordBatch::try_new(batch.schema(), columns)?
        };
        return Ok(batch
            .clone()
            .with_schema(Arc::clone(target))
            .unwrap_or(batch));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| match (c.data_type(), f.data_type()) {
            (DataType::Utf8View, DataType::Utf8) => plain_strings(c.as_string_view()),
            _ => arrow::compute::cast(c, f.data_type()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(target), columns)
}

/// Whether a view array's data buffers hold more than twice the bytes its
/// views point at. A scan's batch points into the pages it was decoded
/// from, which its neighbours share: sent as they are, each message would
/// carry those whole buffers (the IPC writer writes every buffer an array
/// holds).
fn holds_too_much(views: &[u128], buffers: &[Buffer]) -> bool {
    let held: usize = buffers.iter().map(Buffer::len).sum();
    let used: usize = views
        .iter()
        .map(|v| *v as u32 as usize)
        .filter(|len| *len > 12)
        .sum();
    held > 2 * used
}

/// A view column as it is sent: with its values copied into buffers of
/// their own when it holds too much ([`holds_too_much`]).
fn compact<T: ByteViewType + ?Sized>(
    column: &ArrayRef,
    array: &GenericByteViewArray<T>,
) -> ArrayRef {
    if holds_too_much(array.views(), array.data_buffers()) {
        Arc::new(array.gc())
    } else {
        Arc::clone(column)
    }
}

/// `Utf8View` → `Utf8`, the cast every string column of a result takes on
/// its way to the wire: the offsets from the views' lengths, then each
/// value copied once into a buffer of the right size, the null buffer
/// kept as it is. arrow's cast appends value by value through a builder
/// (and builds the nulls again), which the profile of a full `lineitem`
/// fetch showed as a tenth of the server's time.
fn plain_strings(array: &StringViewArray) -> arrow::error::Result<ArrayRef> {
    let views = array.views();
    let nulls = array.nulls();
    // A null's view may still name a value: it counts as empty.
    let length = |i: usize, view: &u128| match nulls {
        Some(n) if n.is_null(i) => 0,
        _ => *view as u32 as usize,
    };
    let total: usize = views.iter().enumerate().map(|(i, v)| length(i, v)).sum();
    if i32::try_from(total).is_err() {
        // More than `Utf8` holds in one array: arrow's cast says so.
        return arrow::compute::cast(array, &DataType::Utf8);
    }
    let mut offsets: Vec<i32> = Vec::with_capacity(views.len() + 1);
    // Room to copy an inlined value's whole 12 bytes and cut it back,
    // which is cheaper than a copy of its own length.
    let mut values: Vec<u8> = Vec::with_capacity(total + 12);
    offsets.push(0);
    let buffers = array.data_buffers();
    for (i, view) in views.iter().enumerate() {
        let len = length(i, view);
        if len <= 12 {
            let end = values.len() + len;
            values.extend_from_slice(&view.to_le_bytes()[4..]);
            values.truncate(end);
        } else {
            let view = ByteView::from(*view);
            let bytes = buffers
                .get(view.buffer_index as usize)
                .and_then(|b| b.get(view.offset as usize..view.offset as usize + len))
                .ok_or_else(|| {
                    arrow::error::ArrowError::InvalidArgumentError(format!(
                        "string view {i} points outside its buffers"
                    ))
                })?;
            values.extend_from_slice(bytes);
        }
        // Fits: `total` does.
        offsets.push(values.len() as i32);
    }
    let strings = StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(values),
        nulls.cloned(),
    )?;
    Ok(Arc::new(strings))
}

impl Stream for ResultStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let control = Arc::clone(&self.control);
        control.waker.register(cx.waker());
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            control.stop(Stop::TimedOut);
        }
        let mut slot = control.running.lock();
        let end = control.end.load(Ordering::SeqCst);
        if end != RUNNING {
            // Stopped from outside: the stream's last item says why.
            control.take(&mut slot, end);
            self.done = true;
            return Poll::Ready(control.error(end).map(Err));
        }
        let Some(q) = slot.as_mut() else {
            self.done = true;
            return Poll::Ready(None);
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.inner.poll_next_unpin(cx)));
        let Ok(polled) = polled else {
            tracing::error!(query_id = %control.id, "a statement panicked while running; it failed alone");
            return self.fail(&mut slot, Error::Internal(control.id));
        };
        let batch = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                let (files, bytes) = meshq_engine::memory::spill_totals(&q.query.plan);
                if files > 0 {
                    debug!(query_id = %control.id, files, bytes, "query spilled");
                }
                q.trace.record.spilled_bytes = bytes as u64;
                q.trace.finish(Ok(()));
                *slot = None;
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                let error = (self.errors)(&e);
                return self.fail(&mut slot, error);
            }
            Poll::Ready(Some(Ok(b))) => b,
        };
        let batch = match cast_batch(&batch, &self.schema) {
            Ok(b) => b,
            Err(e) => return self.fail(&mut slot, Error::encode("a result", e)),
        };
        let r = &mut q.trace.record;
        r.rows += batch.num_rows() as u64;
        r.bytes += batch_bytes(&batch);
        let over = match (self.limits.max_rows, self.limits.max_bytes) {
            (Some(max), _) if r.rows > max => Some(format!(
                "the result has more than {max} rows (limits.max_result_rows); add a filter or a LIMIT"
            )),
            (_, Some(max)) if r.bytes > max => Some(format!(
                "the result is larger than {max} bytes (limits.max_result_bytes); select fewer columns or rows"
            )),
            _ => None,
        };
        if let Some(msg) = over {
            let error = Error::ResultLimit {
                id: control.id,
                what: msg,
            };
            return self.fail(&mut slot, error);
        }
        Poll::Ready(Some(Ok(batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::buffer::NullBuffer;

    /// The result equals arrow's own cast, value for value and null for
    /// null, over inline and long strings, several data buffers, nulls
    /// (one over a view that still points at a value) and slices.
    #[test]
    fn plain_strings_equals_arrows_cast() {
        let long = "a string longer than twelve bytes, with ünïcödé";
        let mut builder = arrow::array::StringViewBuilder::new().with_fixed_block_size(64);
        for i in 0..200 {
            match i % 5 {
                0 => builder.append_null(),
                1 => builder.append_value(""),
                2 => builder.append_value(format!("s{i}")),
                // Lengths of 16 to 51 bytes, the last value of each data
                // buffer ending it.
                3 => builder.append_value(
                    &"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTU"[..13 + i % 40],
                ),
                _ => builder.append_value(format!("{long} {i}")),
            }
        }
        let array = builder.finish();
        assert!(array.data_buffers().len() > 1, "several buffers");
        let check = |a: &StringViewArray| {
            let ours = plain_strings(a).unwrap();
            let theirs = arrow::compute::cast(a, &DataType::Utf8).unwrap();
            assert_eq!(ours.as_ref(), theirs.as_ref());
            assert_eq!(ours.data_type(), &DataType::Utf8);
        };
        check(&array);
        check(&array.slice(7, 93));
        check(&array.slice(0, 0));
        // A null over a view that still names a long value.
        let (views, buffers, _) = array.clone().into_parts();
        let nulls = NullBuffer::from((0..200).map(|i| i % 3 != 0).collect::<Vec<_>>());
        let masked = StringViewArray::new(views, buffers, Some(nulls));
        check(&masked);
        let plain = plain_strings(&masked).unwrap();
        assert!(plain.is_null(3) && plain.is_valid(4));
        assert_eq!(plain.as_string::<i32>().value(3), "");
    }

    /// A client that receives views gets a slice of a scan's batch with
    /// only the bytes its views point at; a column that holds what it
    /// points at is sent as it is.
    #[test]
    fn view_columns_are_sent_compacted() {
        use arrow::array::{BinaryViewArray, StringViewBuilder};
        use arrow::datatypes::{Field, Schema};

        let mut builder = StringViewBuilder::new();
        for i in 0..10_000 {
            builder.append_value(format!("a value longer than twelve bytes {i}"));
        }
        let strings = builder.finish();
        let binaries = BinaryViewArray::from_iter_values(
            (0..10_000).map(|i| format!("some bytes longer than twelve {i}").into_bytes()),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8View, false),
            Field::new("b", DataType::BinaryView, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(strings), Arc::new(binaries)],
        )
        .unwrap();
        let held = |b: &RecordBatch| -> usize {
            b.columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Utf8View => c
                        .as_string_view()
                        .data_buffers()
                        .iter()
                        .map(Buffer::len)
                        .sum::<usize>(),
                    _ => c
                        .as_binary_view()
                        .data_buffers()
                        .iter()
                        .map(Buffer::len)
                        .sum(),
                })
                .sum()
        };
        // Whole: sent as it is, the same buffers.
        let whole = cast_batch(&batch, &schema).unwrap();
        assert_eq!(held(&whole), held(&batch));
        assert_eq!(whole, batch);
        // Ten rows of it: the same values, in a few hundred bytes instead
        // of the whole batch's.
        let slice = batch.slice(5000, 10);
        let sent = cast_batch(&slice, &schema).unwrap();
        assert_eq!(sent, slice);
        assert!(held(&slice) > 300_000, "{}", held(&slice));
        assert!(held(&sent) < 1_000, "{}", held(&sent));
    }
}
