//! Flight session options (`SetSessionOptions`, `GetSessionOptions`,
//! `CloseSession` actions). The JDBC driver's `catalog=` and ADBC's current
//! catalog/schema use them. arrow-flight 59 does not generate these
//! messages, so they are declared here as in `Flight.proto`.

use std::collections::HashMap;

/// `SessionOptionValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionOptionValue {
    /// The value.
    #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
    pub option_value: Option<OptionValue>,
}

/// `SessionOptionValue.StringListValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringListValue {
    /// Values.
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

/// `SessionOptionValue.option_value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OptionValue {
    /// A string.
    #[prost(string, tag = "1")]
    StringValue(String),
    /// A boolean.
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    /// An integer.
    #[prost(sfixed64, tag = "3")]
    Int64Value(i64),
    /// A double.
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    /// A list of strings.
    #[prost(message, tag = "5")]
    StringListValue(StringListValue),
}

/// `SetSessionOptionsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsRequest {
    /// Options to set.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `SetSessionOptionsResult.Error`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionError {
    /// `ErrorValue`: 1 invalid name, 2 invalid value, 3 error.
    #[prost(int32, tag = "1")]
    pub value: i32,
}

/// `SetSessionOptionsResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsResult {
    /// Options that could not be set.
    #[prost(map = "string, message", tag = "1")]
    pub errors: HashMap<String, SetSessionOptionError>,
}

/// `GetSessionOptionsResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetSessionOptionsResult {
    /// Current options.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `CloseSessionResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseSessionResult {
    /// 1 closed, 2 closing, 3 not closeable.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `ErrorValue.INVALID_NAME`.
pub const INVALID_NAME: i32 = 1;
/// `ErrorValue.INVALID_VALUE`.
pub const INVALID_VALUE: i32 = 2;
/// `CloseSessionResult.Status.CLOSED`.
pub const CLOSED: i32 = 1;
/// `CloseSessionResult.Status.NOT_CLOSEABLE`.
pub const NOT_CLOSEABLE: i32 = 3;

/// A string option value.
pub fn string_value(s: impl Into<String>) -> SessionOptionValue {
    SessionOptionValue {
        option_value: Some(OptionValue::StringValue(s.into())),
    }
}
