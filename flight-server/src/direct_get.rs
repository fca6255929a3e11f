//! `DoGet` of a statement's result without copying its Arrow data.
//!
//! tonic sends a `FlightData` by encoding it with prost into a buffer of
//! its own, and arrow-flight builds each `FlightData` by writing the
//! batch's Arrow buffers into one body: two copies of every byte before
//! the socket's. A profile of a full `lineitem` fetch put them at a fifth
//! of the server's time (BENCHMARKS.md, 2026-11-28).
//!
//! [`DirectDoGet`] stands in front of the generated Flight service and
//! answers the `DoGet` calls that stream a statement's result (a
//! statement's ticket, a prepared statement's). It
//! - decodes the call's ticket and runs the same code as the service
//!   ([`MeshFlightService::statement_results`]: the caller's session, its
//!   policies, admission, audit);
//! - encodes each batch with arrow's IPC [`StreamEncoder`], which hands
//!   out the batch's own buffers, and sends them as the body of a gRPC
//!   message, header and framing written by hand ([`Messages`]);
//! - ends with gRPC's trailers: `grpc-status` 0, or the error's status
//!   and message.
//!
//! Every other call, and a `DoGet` whose ticket names anything else (the
//! metadata calls' results), goes to the generated service unchanged,
//! with the request body it was sent.
//!
//! The body is handed to HTTP/2 in chunks of whole 16 KiB frames
//! ([`Messages::piece`]): the frames of the batch's buffers are passed on
//! as they are, and what lies between them (the message's header,
//! padding, small buffers, the ends of large ones) is copied into chunks
//! of its own, at most two frames per buffer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamEncoder;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::{Any, Command};
use arrow_flight::{SchemaAsIpc, Ticket};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;
use tonic::server::NamedService;

use crate::error::Error;
use crate::service::{MeshFlightService, Results};
use crate::wire::WireOptions;

/// The path of Flight's `DoGet`.
const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";

/// A batch whose Arrow data is larger is sent in several messages, as
/// arrow-flight's encoder does (gRPC clients refuse messages over 4 MiB by
/// default).
const MESSAGE_DATA_BYTES: usize = 2 * 1024 * 1024;

/// HTTP/2's default frame size, which gRPC-Go clients (the ADBC driver's)
/// cannot raise: the body is sent in chunks of whole frames.
const FRAME_BYTES: usize = 16 * 1024;

/// The generated Flight service, with statement results streamed by
/// [`DirectDoGet`].
#[derive(Clone)]
pub struct DirectDoGet {
    inner: FlightServiceServer<MeshFlightService>,
    service: Arc<MeshFlightService>,
    max_request_bytes: usize,
}

impl DirectDoGet {
    /// `inner` serves every call `service` does not stream directly.
    pub fn new(
        inner: FlightServiceServer<MeshFlightService>,
        service: Arc<MeshFlightService>,
        max_request_bytes: usize,
    ) -> Self {
        Self {
            inner,
            service,
            max_request_bytes,
        }
    }
}

impl NamedService for DirectDoGet {
    const NAME: &'static str = <FlightServiceServer<MeshFlightService> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl tower::Service<http::Request<tonic::body::Body>> for DirectDoGet {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        if request.uri().path() != DO_GET {
            return Box::pin(async move { inner.call(request).await });
        }
        let service = Arc::clone(&self.service);
        let limit = self.max_request_bytes;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return Ok(Status::invalid_argument(format!(
                        "cannot read the DoGet request: {e}"
                    ))
                    .into_http());
                }
            };
            let ticket = match statement_ticket(&bytes) {
                Some(ticket) => ticket,
                None => {
                    // Not a statement's result (or not a message this
                    // reads): the generated service answers, with the body
                    // it was sent.
                    let request = http::Request::from_parts(
                        parts,
                        tonic::body::Body::new(http_body_util::Full::new(bytes)),
                    );
                    return inner.call(request).await;
                }
            };
            let request = tonic::Request::from_http(http::Request::from_parts(parts, ticket));
            match service.statement_results(request).await {
                Ok(results) => Ok(response(results)),
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The ticket of a gRPC `DoGet` request, when it names a statement's
/// result; `None` for anything else.
fn statement_ticket(request: &[u8]) -> Option<Ticket> {
    // gRPC's message frame: an uncompressed flag, the length, the message.
    let (&[0], rest) = request.split_first_chunk::<1>()? else {
        return None;
    };
    let (len, message) = rest.split_first_chunk::<4>()?;
    if u32::from_be_bytes(*len) as usize != message.len() {
        return None;
    }
    let ticket = Ticket::decode(message).ok()?;
    let command = Any::decode(ticket.ticket.as_ref()).ok()?;
    match Command::try_from(command).ok()? {
        Command::TicketStatementQuery(_) | Command::CommandPreparedStatementQuery(_) => {
            Some(ticket)
        }
        _ => None,
    }
}

/// The HTTP response that streams `results`.
fn response(results: Results) -> http::Response<tonic::body::Body> {
    let body = match results {
        Results::Running(stream, wire) => {
            let schema = Arc::clone(stream.schema());
            ResultBody::new(
                schema,
                stream.map(|b| b.map_err(Status::from)).boxed(),
                wire,
            )
        }
        Results::Done(schema, batches, wire) => ResultBody::new(
            schema,
            futures::stream::iter(batches.into_iter().map(Ok)).boxed(),
            wire,
        ),
    };
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(body))
        .expect("a response of constant parts")
}

type Batches = futures::stream::BoxStream<'static, Result<RecordBatch, Status>>;

/// A statement's result as the body of a gRPC response: the schema's
/// message, a message per batch (or per part of a large batch), then the
/// trailers.
struct ResultBody {
    batches: Batches,
    state: State,
    /// Chunks ready to send, before anything else.
    ready: VecDeque<Bytes>,
}

enum State {
    /// Sending the batches' messages.
    Sending(Box<Messages>),
    /// The batches ended: the trailers are next, with the error that
    /// ended them, if any.
    Ending(Option<Status>),
    /// The trailers were sent.
    Done,
}

impl ResultBody {
    fn new(schema: SchemaRef, batches: Batches, wire: WireOptions) -> Self {
        let mut ready = VecDeque::new();
        let state = match Messages::new(&schema, wire, &mut ready) {
            Ok(m) => State::Sending(Box::new(m)),
            Err(status) => State::Ending(Some(status)),
        };
        Self {
            batches,
            state,
            ready,
        }
    }
}

/// gRPC's trailers: status 0, or `error`'s code and message.
fn trailers(error: Option<Status>) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    match error {
        None => {
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        }
        Some(status) => {
            if let Err(e) = status.add_header(&mut trailers) {
                trailers.insert("grpc-status", http::HeaderValue::from(e.code() as i32));
            }
        }
    }
    trailers
}

impl http_body::Body for ResultBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            let messages = match &mut this.state {
                State::Sending(messages) => messages,
                State::Ending(error) => {
                    let trailers = trailers(error.take());
                    this.state = State::Done;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                State::Done => return Poll::Ready(None),
            };
            // Batches are read only once what was ready went out, so
            // `ready` holds only this batch's messages.
            this.state = match this.batches.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(batch))) => match messages.batch(&batch, &mut this.ready) {
                    Ok(()) => continue,
                    Err(e) => {
                        // What was written of this batch is not sent: the
                        // client gets the error instead of a cut message.
                        this.ready.clear();
                        State::Ending(Some(e.into()))
                    }
                },
                Poll::Ready(Some(Err(status))) => State::Ending(Some(status)),
                Poll::Ready(None) => State::Ending(None),
            };
        }
    }
}

/// Writes a result's gRPC messages: `FlightData` with the IPC message's
/// header in `data_header` and its body, the batch's own buffers, in
/// `data_body`.
struct Messages {
    encoder: StreamEncoder,
    /// Small pieces waiting to be sent as one chunk.
    small: BytesMut,
}

impl Messages {
    /// Writes the schema's message (sent before any batch, also for a
    /// result without rows).
    fn new(
        schema: &SchemaRef,
        wire: WireOptions,
        out: &mut VecDeque<Bytes>,
    ) -> Result<Self, Status> {
        let options = wire.ipc()?;
        let schema_data: arrow_flight::FlightData = SchemaAsIpc::new(schema, &options).into();
        let mut messages = Self {
            encoder: StreamEncoder::try_new_with_options(schema, options)
                .map_err(|e| Error::encode("a result", e))?,
            small: BytesMut::new(),
        };
        let encoded = schema_data.encode_to_vec();
        messages.frame_header(encoded.len())?;
        messages.small.extend_from_slice(&encoded);
        messages.flush(out);
        Ok(messages)
    }

    /// Writes `batch`'s messages.
    fn batch(&mut self, batch: &RecordBatch, out: &mut VecDeque<Bytes>) -> Result<(), Error> {
        let bytes = crate::result_stream::batch_bytes(batch) as usize;
        let parts = bytes.div_ceil(MESSAGE_DATA_BYTES).max(1);
        let rows = batch.num_rows().div_ceil(parts).max(1);
        let mut offset = 0;
        loop {
            let len = rows.min(batch.num_rows() - offset);
            let part = batch.slice(offset, len);
            let buffers = self
                .encoder
                .encode(&part)
                .map_err(|e| Error::encode("a result", e))?;
            self.ipc_messages(buffers, out)?;
            offset += len;
            if offset >= batch.num_rows() {
                return Ok(());
            }
        }
    }

    /// Turns the IPC stream `buffers` (continuation, length, header, body,
    /// per message) into gRPC messages. The schema's message, which the
    /// encoder writes before its first batch, was sent already.
    fn ipc_messages(
        &mut self,
        buffers: Vec<Buffer>,
        out: &mut VecDeque<Bytes>,
    ) -> Result<(), Error> {
        let malformed = |what: &str| Error::encode("a result", format!("IPC stream: {what}"));
        let mut stream = Pieces::new(buffers);
        while !stream.is_empty() {
            let mut word = [0u8; 4];
            stream
                .read(&mut word)
                .ok_or_else(|| malformed("cut short"))?;
            if word == [0xff; 4] {
                stream
                    .read(&mut word)
                    .ok_or_else(|| malformed("cut short"))?;
            }
            let header_len = i32::from_le_bytes(word);
            let header_len =
                usize::try_from(header_len).map_err(|_| malformed("negative length"))?;
            if header_len == 0 {
                // The end-of-stream marker.
                continue;
            }
            let mut header = vec![0u8; header_len];
            stream
                .read(&mut header)
                .ok_or_else(|| malformed("cut short"))?;
            let message = arrow::ipc::root_as_message(&header)
                .map_err(|e| malformed(&format!("header: {e}")))?;
            let body_len = usize::try_from(message.bodyLength())
                .map_err(|_| malformed("negative body length"))?;
            if message.header_type() == arrow::ipc::MessageHeader::Schema {
                stream
                    .skip(body_len)
                    .ok_or_else(|| malformed("cut short"))?;
                continue;
            }
            // FlightData: data_header (field 2), data_body (field 1000,
            // left out when empty, as prost does).
            use prost::encoding::{
                WireType, encode_key, encode_varint, encoded_len_varint, key_len,
            };
            let field_len =
                |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
            let body_field_len = if body_len > 0 {
                field_len(1000, body_len)
            } else {
                0
            };
            self.frame_header(field_len(2, header_len) + body_field_len)?;
            encode_key(2, WireType::LengthDelimited, &mut self.small);
            encode_varint(header_len as u64, &mut self.small);
            self.small.extend_from_slice(&header);
            if body_len > 0 {
                encode_key(1000, WireType::LengthDelimited, &mut self.small);
                encode_varint(body_len as u64, &mut self.small);
            }
            for piece in stream
                .take(body_len)
                .ok_or_else(|| malformed("cut short"))?
            {
                self.piece(piece, out);
            }
        }
        self.flush(out);
        Ok(())
    }

    /// Sends `piece` of a message body in chunks of whole HTTP/2 frames:
    /// HTTP/2 sends each chunk in frames of its own, and a client pays
    /// per frame, so a chunk that ended in a short frame would cost as
    /// much as a full one. What is gathered is topped up to whole frames
    /// from the piece's head, the piece's whole frames are passed on
    /// without a copy, and its tail is gathered.
    fn piece(&mut self, mut piece: Bytes, out: &mut VecDeque<Bytes>) {
        let short = (FRAME_BYTES - self.small.len() % FRAME_BYTES) % FRAME_BYTES;
        self.small
            .extend_from_slice(&piece.split_to(short.min(piece.len())));
        if self.small.len().is_multiple_of(FRAME_BYTES) {
            self.flush(out);
        }
        let whole = piece.len() / FRAME_BYTES * FRAME_BYTES;
        if whole > 0 {
            // Only whole frames were gathered, and they were sent.
            debug_assert!(self.small.is_empty());
            out.push_back(piece.split_to(whole));
        }
        self.small.extend_from_slice(&piece);
    }

    /// gRPC's frame of a message `len` bytes long: uncompressed, the
    /// length. Batches are cut by rows to about [`MESSAGE_DATA_BYTES`], but
    /// a single row can be larger: a message over the server's limit
    /// ([`crate::MAX_MESSAGE_BYTES`], as tonic enforces for the other
    /// calls) is refused with an error instead of being sent.
    fn frame_header(&mut self, len: usize) -> Result<(), Error> {
        let framed = u32::try_from(len)
            .ok()
            .filter(|_| len <= crate::MAX_MESSAGE_BYTES)
            .ok_or_else(|| {
                Error::encode(
                    "a result",
                    format!(
                        "one message of the result would be {len} bytes, over the limit of {} bytes; \
                         select fewer or narrower columns",
                        crate::MAX_MESSAGE_BYTES
                    ),
                )
            })?;
        self.small.extend_from_slice(&[0]);
        self.small.extend_from_slice(&framed.to_be_bytes());
        Ok(())
    }

    fn flush(&mut self, out: &mut VecDeque<Bytes>) {
        if !self.small.is_empty() {
            out.push_back(self.small.split().freeze());
        }
    }
}

/// A run of Arrow buffers read front to back, handing out pieces of them
/// without a copy.
struct Pieces {
    buffers: VecDeque<Buffer>,
}

/// An Arrow buffer as `Bytes`, sharing its memory.
struct Shared(Buffer);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Pieces {
    fn new(buffers: Vec<Buffer>) -> Self {
        Self {
            buffers: buffers.into_iter().filter(|b| !b.is_empty()).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        // Empty buffers are never kept.
        self.buffers.is_empty()
    }

    /// The next `n` bytes as pieces of the buffers; `None` if fewer are
    /// left.
    fn take(&mut self, mut n: usize) -> Option<Vec<Bytes>> {
        let mut pieces = Vec::new();
        while n > 0 {
            let front = self.buffers.pop_front()?;
            if front.len() <= n {
                n -= front.len();
                pieces.push(Bytes::from_owner(Shared(front)));
            } else {
                pieces.push(Bytes::from_owner(Shared(front.slice_with_length(0, n))));
                self.buffers.push_front(front.slice(n));
                n = 0;
            }
        }
        Some(pieces)
    }

    /// Copies the next bytes into `out`.
    fn read(&mut self, out: &mut [u8]) -> Option<()> {
        let mut at = 0;
        for piece in self.take(out.len())? {
            out[at..at + piece.len()].copy_from_slice(&piece);
            at += piece.len();
        }
        Some(())
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::FlightData;
    use arrow_flight::decode::FlightRecordBatchStream;
    use arrow_flight::sql::{CommandGetCatalogs, ProstMessageExt, TicketStatementQuery};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("flag", DataType::Boolean, true),
        ]))
    }

    fn batch(rows: usize, from: i64) -> RecordBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(from..from + rows as i64));
        let names: ArrayRef = Arc::new(StringArray::from_iter((0..rows).map(|i| {
            (i % 7 != 3).then(|| format!("a name longer than twelve bytes, {}", from + i as i64))
        })));
        let flags: ArrayRef = Arc::new(BooleanArray::from_iter(
            (0..rows).map(|i| (i % 5 != 0).then_some(i % 2 == 0)),
        ));
        RecordBatch::try_new(schema(), vec![ids, names, flags]).unwrap()
    }

    /// The body's gRPC messages, decoded, and its trailers.
    async fn send(
        batches: Vec<Result<RecordBatch, Status>>,
        wire: WireOptions,
    ) -> (Vec<FlightData>, http::HeaderMap) {
        let body = ResultBody::new(schema(), futures::stream::iter(batches).boxed(), wire);
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        let mut bytes = collected.to_bytes();
        let mut messages = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0, "uncompressed");
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            assert!(len <= 4 * 1024 * 1024, "a message of {len} bytes");
            let message = bytes.split_to(5 + len).split_off(5);
            messages.push(FlightData::decode(message).unwrap());
        }
        (messages, trailers)
    }

    async fn decode(messages: Vec<FlightData>) -> Vec<RecordBatch> {
        FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(
            messages.into_iter().map(Ok),
        ))
        .map(|b| b.unwrap())
        .collect()
        .await
    }

    /// What arrives is what was sent, value for value: small and large
    /// batches (the large one in several messages under 4 MiB), a slice,
    /// an empty batch, with and without LZ4.
    #[tokio::test]
    async fn a_result_arrives_as_it_was_sent() {
        let large = batch(150_000, 0);
        let sent = vec![
            batch(1000, 0),
            large.clone(),
            batch(1000, 7).slice(13, 500),
            batch(0, 0),
        ];
        for compression in [None, Some(arrow::ipc::CompressionType::LZ4_FRAME)] {
            let wire = WireOptions {
                views: false,
                compression,
            };
            let (messages, trailers) = send(sent.iter().cloned().map(Ok).collect(), wire).await;
            assert_eq!(trailers.get("grpc-status").unwrap(), "0");
            // The schema, then more messages than batches: the large one
            // was cut.
            assert!(
                messages.len() > sent.len() + 1,
                "{} messages",
                messages.len()
            );
            let received = decode(messages).await;
            assert!(received.iter().all(|b| b.schema() == schema()));
            let all = |b: &[RecordBatch]| arrow::compute::concat_batches(&schema(), b).unwrap();
            assert_eq!(all(&received), all(&sent));
        }
    }

    /// An error after some batches ends the body with its status; what
    /// came before it arrives whole.
    #[tokio::test]
    async fn an_error_ends_the_result_with_its_status() {
        let first = batch(100, 0);
        let (messages, trailers) = send(
            vec![
                Ok(first.clone()),
                Err(Status::permission_denied("no access to sales.orders")),
            ],
            WireOptions::default(),
        )
        .await;
        // As a gRPC client reads it (the message is percent-encoded).
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "no access to sales.orders");
        assert_eq!(decode(messages).await, vec![first]);
    }

    /// A result without rows still sends its schema.
    #[tokio::test]
    async fn a_result_without_rows_sends_its_schema() {
        let (messages, trailers) = send(vec![], WireOptions::default()).await;
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(messages.len(), 1);
        let sent = Schema::try_from(&messages[0]).unwrap();
        assert_eq!(&sent, schema().as_ref());
    }

    /// A body is handed on in chunks of whole frames, whatever the sizes
    /// of its pieces, and arrives unchanged.
    #[test]
    fn pieces_go_out_in_whole_frames() {
        let mut messages = Messages {
            encoder: StreamEncoder::try_new(&schema()).unwrap(),
            small: BytesMut::new(),
        };
        let sizes = [5, 40_000, 3, 70_000, 16_384, 100, 33_000];
        let pieces: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Bytes::from(vec![i as u8 + 1; *n]))
            .collect();
        let mut out = VecDeque::new();
        for piece in pieces.iter().cloned() {
            messages.piece(piece, &mut out);
        }
        messages.flush(&mut out);
        let chunks: Vec<Bytes> = out.into_iter().collect();
        let (last, whole) = chunks.split_last().unwrap();
        assert!(
            whole.iter().all(|c| c.len().is_multiple_of(FRAME_BYTES)),
            "{:?}",
            chunks.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert!(last.len() < FRAME_BYTES + 1);
        assert_eq!(chunks.concat(), pieces.concat());
    }

    /// Only statements' results are streamed here; anything else (or a
    /// request this does not read) goes to the generated service.
    #[test]
    fn only_statement_tickets_are_taken() {
        let framed = |ticket: Ticket| {
            let message = ticket.encode_to_vec();
            let mut request = vec![0];
            request.extend_from_slice(&(message.len() as u32).to_be_bytes());
            request.extend_from_slice(&message);
            request
        };
        let statement = Ticket::new(
            TicketStatementQuery {
                statement_handle: Bytes::from_static(b"handle"),
            }
            .as_any()
            .encode_to_vec(),
        );
        let catalogs = Ticket::new(CommandGetCatalogs {}.as_any().encode_to_vec());
        let prepared = Ticket::new(
            arrow_flight::sql::CommandPreparedStatementQuery {
                prepared_statement_handle: Bytes::from_static(b"handle"),
            }
            .as_any()
            .encode_to_vec(),
        );
        assert!(statement_ticket(&framed(statement.clone())).is_some());
        assert!(statement_ticket(&framed(prepared)).is_some());
        assert!(statement_ticket(&framed(catalogs)).is_none());
        assert!(statement_ticket(&framed(Ticket::new(b"not a command".to_vec()))).is_none());
        // Compressed, or cut short: not read here.
        let mut compressed = framed(statement.clone());
        compressed[0] = 1;
        assert!(statement_ticket(&compressed).is_none());
        let whole = framed(statement);
        assert!(statement_ticket(&whole[..whole.len() - 1]).is_none());
    }
}
