//! What a ticket or prepared-statement handle carries: enough to plan the
//! query again (SQL and bound parameters), never a principal — `DoGet`
//! authenticates again and runs as the caller: the plan its session kept
//! for the ticket's nonce, or a new one.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The statement behind a `TicketStatementQuery`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementTicket {
    /// SQL text.
    pub sql: String,
    /// Parameter values as Arrow IPC (one row), for prepared statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
    /// The statement already ran when it was announced (DDL, DML, `SET`):
    /// its result as Arrow IPC, which DoGet sends instead of running it
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Makes each GetFlightInfo's ticket unique, so `CancelFlightInfo`
    /// stops that query and not another client's identical one.
    #[serde(default)]
    pub nonce: u64,
}

impl StatementTicket {
    /// Serialises for a ticket.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a ticket.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|_| Error::malformed("statement ticket"))
    }
}

/// A prepared statement handle: an id for the server-side parameter store,
/// and the SQL so it can be planned even after the store forgot it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedHandle {
    /// Key of bound parameters on the server.
    pub id: String,
    /// SQL text.
    pub sql: String,
}

impl PreparedHandle {
    /// Serialises for the client.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a handle from the client.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|_| Error::malformed("prepared statement handle"))
    }
}

/// Batches of one schema → IPC text for a ticket.
pub fn batches_to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)
            .map_err(|e| Error::encode("a result", e))?;
        for b in batches {
            w.write(b).map_err(|e| Error::encode("a result", e))?;
        }
        w.finish().map_err(|e| Error::encode("a result", e))?;
    }
    Ok(STANDARD.encode(buf))
}

/// IPC text from a ticket → its schema and batches.
pub fn batches_from_ipc(text: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let malformed = || Error::malformed("ticket");
    let bytes = STANDARD.decode(text).map_err(|_| malformed())?;
    let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|_| malformed())?;
    let schema = r.schema();
    let batches = r.collect::<Result<Vec<_>, _>>().map_err(|_| malformed())?;
    Ok((schema, batches))
}

/// One-row parameter batch → IPC text for a ticket.
pub fn params_to_ipc(batch: &RecordBatch) -> Result<String> {
    batches_to_ipc(&batch.schema(), std::slice::from_ref(batch))
}

/// IPC text from a ticket → the parameter batch.
pub fn params_from_ipc(text: &str) -> Result<RecordBatch> {
    let (_, mut batches) = batches_from_ipc(text)?;
    match batches.len() {
        1 => Ok(batches.remove(0)),
        _ => Err(Error::malformed("parameters in ticket")),
    }
}

/// The ticket of a statement announced with `result` (when it already ran).
pub(crate) fn statement_ticket(
    sql: String,
    params: Option<&RecordBatch>,
    schema: &SchemaRef,
    result: Option<Vec<RecordBatch>>,
    nonce: u64,
) -> Result<Vec<u8>, Error> {
    let handle = StatementTicket {
        sql,
        params: params.map(params_to_ipc).transpose()?,
        result: result.map(|b| batches_to_ipc(schema, &b)).transpose()?,
        nonce,
    };
    Ok(TicketStatementQuery {
        statement_handle: handle.encode().into(),
    }
    .as_any()
    .encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn round_trips() {
        let t = StatementTicket {
            sql: "SELECT 1".into(),
            params: None,
            result: None,
            nonce: 7,
        };
        assert_eq!(StatementTicket::decode(&t.encode()).unwrap(), t);
        let batch = RecordBatch::try_from_iter([(
            "$1",
            Arc::new(arrow::array::StringArray::from(vec!["EMEA"])) as _,
        )])
        .unwrap();
        assert_eq!(
            params_from_ipc(&params_to_ipc(&batch).unwrap()).unwrap(),
            batch
        );
        assert!(StatementTicket::decode(b"nope").is_err());
    }
}
