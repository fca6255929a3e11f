//! Arrow data in Flight form: schemas, result streams (schema first, also
//! for zero rows) and `FlightInfo`s.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use futures::{Stream, TryStreamExt};
use tonic::{Response, Status};

use crate::error::Error;
use crate::result_stream::ResultStream;

/// A boxed stream of Flight messages or gRPC errors.
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(crate) fn schema_ipc(schema: &Schema) -> Result<Vec<u8>, Error> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Error::encode("a schema", e))?;
    Ok(bytes.to_vec())
}

/// A stream of batches in Flight form, schema first (also for zero rows).
pub(crate) fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, Error>> + Send + 'static,
) -> BoxStream<arrow_flight::FlightData> {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches.map_err(|e| FlightError::Tonic(Box::new(e.into()))))
            .map_err(|e| match e {
                FlightError::Tonic(s) => *s,
                other => Error::encode("a result", other).into(),
            }),
    )
}

pub(crate) fn encode_stream(stream: ResultStream) -> BoxStream<arrow_flight::FlightData> {
    let schema = Arc::clone(stream.schema());
    encode(schema, stream)
}

pub(crate) fn encode_batches(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> BoxStream<arrow_flight::FlightData> {
    encode(schema, futures::stream::iter(batches.into_iter().map(Ok)))
}

/// A metadata result: one batch, schema first.
pub(crate) fn one_batch<E: std::fmt::Display>(
    batch: Result<RecordBatch, E>,
) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
    let batch = batch.map_err(|e| Error::encode("a metadata result", e))?;
    Ok(Response::new(encode_batches(batch.schema(), vec![batch])))
}

pub(crate) fn info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Error> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Error::encode("a schema", e))
        .map(|i| i.with_endpoint(endpoint).with_descriptor(descriptor))
}
