//! Arrow data in Flight form: schemas, result streams (schema first, also
//! for zero rows) and `FlightInfo`s.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::CompressionType;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use futures::{Stream, TryStreamExt};
use tonic::{Response, Status};

use crate::error::Error;
use crate::result_stream::ResultStream;

/// How a client asked to receive results, by call headers (sent on every
/// call of a statement: `GetFlightInfo` announces the schema `DoGet`
/// sends):
/// - `x-meshq-view-types: true` keeps `Utf8View`/`BinaryView` columns as
///   they are, instead of casting them to `Utf8`/`Binary`;
/// - `x-meshq-ipc-compression: lz4 | zstd | none` compresses the IPC
///   buffers of each batch (Arrow IPC body compression).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireOptions {
    /// Keep view types.
    pub views: bool,
    /// IPC body compression.
    pub compression: Option<CompressionType>,
}

/// The header that asks for view types.
pub const VIEW_TYPES_HEADER: &str = "x-meshq-view-types";
/// The header that asks for IPC compression.
pub const COMPRESSION_HEADER: &str = "x-meshq-ipc-compression";

impl WireOptions {
    /// Reads the options from a call's headers; an unknown value is a bad
    /// request naming the header and what it accepts.
    pub fn from_headers(headers: &tonic::metadata::MetadataMap) -> Result<Self, Error> {
        let value = |name: &str| {
            headers.get(name).map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .unwrap_or_default()
            })
        };
        let views = match value(VIEW_TYPES_HEADER).as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => {
                return Err(Error::BadRequest(format!(
                    "header {VIEW_TYPES_HEADER}: {other:?} is not true or false"
                )));
            }
        };
        let compression = match value(COMPRESSION_HEADER).as_deref() {
            None | Some("none") => None,
            Some("lz4") => Some(CompressionType::LZ4_FRAME),
            Some("zstd") => Some(CompressionType::ZSTD),
            Some(other) => {
                return Err(Error::BadRequest(format!(
                    "header {COMPRESSION_HEADER}: {other:?} is not lz4, zstd or none"
                )));
            }
        };
        Ok(Self { views, compression })
    }

    pub(crate) fn ipc(&self) -> Result<IpcWriteOptions, Error> {
        IpcWriteOptions::default()
            .try_with_compression(self.compression)
            .map_err(|e| Error::encode("a result", e))
    }
}

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
    wire: WireOptions,
) -> BoxStream<arrow_flight::FlightData> {
    let options = match wire.ipc() {
        Ok(o) => o,
        Err(e) => return Box::pin(futures::stream::once(async move { Err(e.into()) })),
    };
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_options(options)
            .with_schema(schema)
            .build(batches.map_err(|e| FlightError::Tonic(Box::new(e.into()))))
            .map_err(|e| match e {
                FlightError::Tonic(s) => *s,
                other => Error::encode("a result", other).into(),
            }),
    )
}

pub(crate) fn encode_stream(
    stream: ResultStream,
    wire: WireOptions,
) -> BoxStream<arrow_flight::FlightData> {
    let schema = Arc::clone(stream.schema());
    encode(schema, stream, wire)
}

pub(crate) fn encode_batches(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    wire: WireOptions,
) -> BoxStream<arrow_flight::FlightData> {
    encode(
        schema,
        futures::stream::iter(batches.into_iter().map(Ok)),
        wire,
    )
}

/// A metadata result: one batch, schema first.
pub(crate) fn one_batch<E: std::fmt::Display>(
    batch: Result<RecordBatch, E>,
) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
    let batch = batch.map_err(|e| Error::encode("a metadata result", e))?;
    Ok(Response::new(encode_batches(
        batch.schema(),
        vec![batch],
        WireOptions::default(),
    )))
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
