//! meshq's Arrow Flight SQL server (arrives with the Flight SQL work).
//!
//! It will serve [`meshq_engine::Engine`] sessions over `FlightSqlService`
//! on tonic: authentication, metadata RPCs, statements and prepared
//! statements, each run as the authenticated principal.
