//! Flight actions beyond prepared statements: session options
//! (`SetSessionOptions`, `GetSessionOptions`, `CloseSession`) and
//! `CancelFlightInfo`.

use arrow_flight::{CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus};
use meshq_engine::CATALOG;
use prost::Message;
use tonic::metadata::MetadataMap;

use crate::auth::Authenticator;
use crate::cancel::CancelRegistry;
use crate::error::{Error, Result};
use crate::session_options as so;
use crate::sessions::ClientSession;

/// The custom actions meshq answers.
pub const ACTIONS: [&str; 4] = [
    "SetSessionOptions",
    "GetSessionOptions",
    "CloseSession",
    "CancelFlightInfo",
];

/// `SetSessionOptions`: `catalog` (must be `mesh`) and `schema` (the
/// default schema for unqualified names).
pub fn set_session_options(client: &ClientSession, body: &[u8]) -> Result<Vec<u8>> {
    let session = client.session()?;
    let req = so::SetSessionOptionsRequest::decode(body)
        .map_err(|_| Error::malformed("SetSessionOptionsRequest"))?;
    let mut result = so::SetSessionOptionsResult::default();
    for (name, value) in req.session_options {
        let text = match &value.option_value {
            Some(so::OptionValue::StringValue(s)) => Some(s.clone()),
            _ => None,
        };
        let error = match (name.as_str(), text) {
            ("catalog", Some(c)) if c == CATALOG => None,
            ("schema", Some(s)) => {
                let exists = session
                    .context()
                    .catalog(CATALOG)
                    .is_some_and(|c| c.schema_names().contains(&s));
                if exists {
                    client.data().set_default_schema(&s);
                    client.forget_plans();
                    None
                } else {
                    Some(so::INVALID_VALUE)
                }
            }
            ("catalog" | "schema", _) => Some(so::INVALID_VALUE),
            _ => Some(so::INVALID_NAME),
        };
        if let Some(value) = error {
            result
                .errors
                .insert(name, so::SetSessionOptionError { value });
        }
    }
    Ok(result.encode_to_vec())
}

/// `GetSessionOptions`.
pub fn get_session_options(client: &ClientSession) -> Vec<u8> {
    let mut result = so::GetSessionOptionsResult::default();
    result
        .session_options
        .insert("catalog".into(), so::string_value(CATALOG));
    result.session_options.insert(
        "schema".into(),
        so::string_value(client.data().default_schema()),
    );
    result.encode_to_vec()
}

/// `CancelFlightInfo`: stops the DoGet streams of the FlightInfo's tickets.
pub fn cancel_flight_info(cancels: &CancelRegistry, body: &[u8]) -> Result<Vec<u8>> {
    let req = CancelFlightInfoRequest::decode(body)
        .map_err(|_| Error::malformed("CancelFlightInfoRequest"))?;
    let cancelled: usize = req
        .info
        .iter()
        .flat_map(|i| i.endpoint.iter())
        .filter_map(|e| e.ticket.as_ref())
        .map(|t| cancels.cancel(&t.ticket))
        .sum();
    let status = if cancelled > 0 {
        CancelStatus::Cancelled
    } else {
        // Queries run only while their DoGet streams; none is.
        CancelStatus::NotCancellable
    };
    Ok(CancelFlightInfoResult {
        status: status as i32,
    }
    .encode_to_vec())
}

/// `CloseSession`: ends the session of the bearer token the call came
/// with; a call that has none (a JWT, Basic credentials) has nothing to
/// close.
pub fn close_session(auth: &Authenticator, metadata: &MetadataMap) -> Vec<u8> {
    let status = if auth.logout(metadata) {
        so::CLOSED
    } else {
        so::NOT_CLOSEABLE
    };
    so::CloseSessionResult { status }.encode_to_vec()
}
