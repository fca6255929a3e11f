//! The Flight SQL service: each RPC authenticates and delegates —
//! statements to [`crate::query`], metadata to [`crate::metadata`], actions
//! to [`crate::actions`], credentials to [`crate::auth`].

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket};
use futures::TryStreamExt;
use meshq_engine::{CATALOG, LiveEngine};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::actions;
use crate::audit::{self, AuditRecord};
use crate::auth::{AuthFailure, Authenticator};
use crate::cancel::CancelRegistry;
use crate::error::Error;
use crate::metadata::{self, sql_info, xdbc_types};
use crate::operations::Operations;
use crate::params::ParamStore;
use crate::query::{Call, Lifecycle, QueryId, QueryRequest};
use crate::sessions::ClientSession;
use crate::ticket::{
    PreparedHandle, StatementTicket, batches_from_ipc, params_from_ipc, statement_ticket,
};
use crate::wire::{
    BoxStream, WireOptions, encode_batches, encode_stream, info, one_batch, schema_ipc,
};

/// meshq's `FlightSqlService`.
pub struct MeshFlightService {
    auth: Arc<Authenticator>,
    queries: Lifecycle,
    cancels: Arc<CancelRegistry>,
    params: ParamStore,
    sql_info: SqlInfoData,
    xdbc: XdbcTypeInfoData,
}

impl MeshFlightService {
    /// A service over the served mesh.
    pub fn new(live: Arc<LiveEngine>, ops: Arc<Operations>) -> Self {
        let audit_ops = Arc::clone(&ops);
        let on_failure = Box::new(move |f: &AuthFailure, peer: Option<std::net::SocketAddr>| {
            audit_ops.metrics.auth_failed();
            audit_ops.audit(&AuditRecord {
                ts: audit::now(),
                event: "auth_failure",
                user: Some(f.user.clone()),
                client: peer.map(|p| p.to_string()),
                outcome: "error",
                error_code: Some("UNAUTHENTICATED"),
                ..Default::default()
            });
        });
        let eviction_ops = Arc::clone(&ops);
        let on_eviction = Box::new(move |e| eviction_ops.metrics.session_evicted(e));
        let cancels = Arc::new(CancelRegistry::default());
        Self {
            auth: Arc::new(Authenticator::new(live, on_failure, on_eviction)),
            queries: Lifecycle::new(ops, Arc::clone(&cancels)),
            cancels,
            params: ParamStore::default(),
            sql_info: sql_info(),
            xdbc: xdbc_types(),
        }
    }

    /// The authenticator, shared with the web catalog (one set of
    /// sessions).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(&self.auth)
    }

    /// Counts logged-in sessions (for metrics), after the service is moved
    /// into the server.
    pub fn sessions_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let auth = Arc::clone(&self.auth);
        move || auth.sessions()
    }

    async fn client<T: Sync>(&self, req: &Request<T>) -> Result<Arc<ClientSession>, Status> {
        Ok(self
            .auth
            .authenticate(req.metadata(), req.remote_addr())
            .await?)
    }

    fn request<T>(
        &self,
        client: Arc<ClientSession>,
        req: &Request<T>,
        call: Call,
        sql: String,
        params: Option<RecordBatch>,
    ) -> Result<QueryRequest, Error> {
        Ok(QueryRequest {
            id: QueryId::new(),
            client,
            peer: req.remote_addr(),
            call,
            sql,
            params,
            prepared: None,
            wire: WireOptions::from_headers(req.metadata())?,
        })
    }

    /// Authenticates, then announces a metadata result of `schema` whose
    /// ticket is the command itself.
    async fn metadata_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        command: Any,
    ) -> Result<Response<FlightInfo>, Status> {
        self.client(&request).await?;
        Ok(Response::new(info(
            schema,
            command.encode_to_vec(),
            request.into_inner(),
        )?))
    }

    /// Announces a statement: plans it (running it now unless it is a
    /// query) and hands out its ticket.
    async fn announce(
        &self,
        request: Request<FlightDescriptor>,
        call: Call,
        sql: String,
        params: Option<RecordBatch>,
        prepared: Option<String>,
    ) -> Result<Response<FlightInfo>, Status> {
        let client = self.client(&request).await?;
        let mut req = self.request(client, &request, call, sql.clone(), params.clone())?;
        req.prepared = prepared;
        let nonce = rand::random();
        let announced = self.queries.announce(req, nonce).await?;
        let ticket = statement_ticket(
            sql,
            params.as_ref(),
            &announced.schema,
            announced.result,
            nonce,
        )?;
        Ok(Response::new(info(
            &announced.schema,
            ticket,
            request.into_inner(),
        )?))
    }

    /// Runs a statement for `DoGet`; `nonce` is its ticket's, when the
    /// ticket is one `GetFlightInfo` made.
    async fn stream(
        &self,
        request: Request<Ticket>,
        call: Call,
        sql: String,
        params: Option<RecordBatch>,
        nonce: Option<u64>,
        prepared: Option<String>,
    ) -> Result<Results, Status> {
        let client = self.client(&request).await?;
        let ticket = request.get_ref().ticket.to_vec();
        let mut req = self.request(client, &request, call, sql, params)?;
        req.prepared = prepared;
        let wire = req.wire;
        let stream = self.queries.stream(req, ticket, nonce).await?;
        Ok(Results::Running(stream, wire))
    }

    /// The result a `DoGet` of a statement's ticket or of a prepared
    /// statement asks for (`None` for any other ticket), before it is
    /// put in Flight form: what the service's `DoGet` sends, and what
    /// [`crate::direct_get::DirectDoGet`] streams without copying.
    pub(crate) async fn statement_results(
        &self,
        request: Request<Ticket>,
    ) -> Result<Results, Status> {
        let any = arrow_flight::sql::Any::decode(request.get_ref().ticket.as_ref())
            .map_err(|_| Error::malformed("ticket"))?;
        match arrow_flight::sql::Command::try_from(any).map_err(|_| Error::malformed("ticket"))? {
            arrow_flight::sql::Command::TicketStatementQuery(ticket) => {
                self.statement_ticket_results(ticket, request).await
            }
            arrow_flight::sql::Command::CommandPreparedStatementQuery(cmd) => {
                self.prepared_results(cmd, request).await
            }
            _ => Err(Error::malformed("ticket").into()),
        }
    }

    async fn statement_ticket_results(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Results, Status> {
        let t = StatementTicket::decode(&ticket.statement_handle)?;
        if let Some(result) = &t.result {
            // Ran when it was announced: its result, in the announced schema.
            self.client(&request).await?;
            let wire = WireOptions::from_headers(request.metadata())?;
            let (schema, batches) = batches_from_ipc(result)?;
            return Ok(Results::Done(schema, batches, wire));
        }
        let params = t.params.as_deref().map(params_from_ipc).transpose()?;
        let call = if params.is_some() {
            Call::Prepared
        } else {
            Call::Statement
        };
        self.stream(request, call, t.sql, params, Some(t.nonce), None)
            .await
    }

    async fn prepared_results(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Results, Status> {
        let client = self.client(&request).await?;
        let handle = PreparedHandle::decode(&cmd.prepared_statement_handle)?;
        let params = self.bound(&client, &handle);
        self.stream(
            request,
            Call::Prepared,
            handle.sql,
            params,
            None,
            Some(handle.id),
        )
        .await
    }

    /// The parameters `client` bound to `handle`.
    fn bound(&self, client: &ClientSession, handle: &PreparedHandle) -> Option<RecordBatch> {
        self.params.get(client.principal().display_name(), handle)
    }
}

/// A statement's result for `DoGet`, before it is put in Flight form.
pub(crate) enum Results {
    /// Running: its batches as they come.
    Running(crate::result_stream::ResultStream, WireOptions),
    /// Ran when it was announced: its batches, in the announced schema.
    Done(arrow::datatypes::SchemaRef, Vec<RecordBatch>, WireOptions),
}

impl Results {
    /// The result in Flight form, as the generated service sends it.
    fn encode(self) -> BoxStream<arrow_flight::FlightData> {
        match self {
            Self::Running(stream, wire) => encode_stream(stream, wire),
            Self::Done(schema, batches, wire) => encode_batches(schema, batches, wire),
        }
    }
}

#[tonic::async_trait]
impl FlightSqlService for MeshFlightService {
    type FlightService = MeshFlightService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<HandshakeResponse>>, Status> {
        let (token, session) = self
            .auth
            .login_basic(request.metadata(), request.remote_addr())
            .await?;
        info!(user = %session.principal().display_name(), "login");
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut resp: Response<BoxStream<HandshakeResponse>> =
            Response::new(Box::pin(futures::stream::iter(vec![Ok(response)])));
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| Error::encode("a token", e))?;
        resp.metadata_mut().insert("authorization", value);
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        tracing::debug!(rpc = "get_flight_info_statement");
        self.announce(request, Call::Statement, query.query, None, None)
            .await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        tracing::debug!(rpc = "do_get_statement");
        Ok(Response::new(
            self.statement_ticket_results(ticket, request)
                .await?
                .encode(),
        ))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        tracing::debug!(rpc = "do_action_create_prepared_statement");
        let client = self.client(&request).await?;
        let handle = PreparedHandle {
            id: QueryId::new().to_string(),
            sql: query.query,
        };
        let mut req = self.request(client, &request, Call::Prepared, handle.sql.clone(), None)?;
        req.prepared = Some(handle.id.clone());
        let (dataset, params) = self.queries.prepare(req).await?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode().into(),
            dataset_schema: schema_ipc(&dataset)?.into(),
            parameter_schema: schema_ipc(&params)?.into(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let client = self.client(&request).await?;
        let handle = PreparedHandle::decode(&query.prepared_statement_handle)?;
        self.params
            .remove(client.principal().display_name(), &handle);
        client.forget_prepared(&handle.id);
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        tracing::debug!(rpc = "do_put_prepared_statement_query");
        let client = self.client(&request).await?;
        let handle = PreparedHandle::decode(&query.prepared_statement_handle)?;
        let stream = request.into_inner();
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                stream.map_err(|s| FlightError::Tonic(Box::new(s))),
            )
            .try_collect()
            .await
            .map_err(|e| Error::BadRequest(format!("cannot read bound parameters: {e}")))?;
        let batch = match batches.as_slice() {
            [] => return Err(Error::BadRequest("no parameter values were sent".into()).into()),
            [b] => b.clone(),
            many => arrow::compute::concat_batches(&many[0].schema(), many).map_err(|e| {
                Error::BadRequest(format!("bound parameter batches do not agree: {e}"))
            })?,
        };
        self.params
            .put(client.principal().display_name(), &handle, batch);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode().into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        tracing::debug!(rpc = "get_flight_info_prepared_statement");
        let client = self.client(&request).await?;
        let handle = PreparedHandle::decode(&cmd.prepared_statement_handle)?;
        let params = self.bound(&client, &handle);
        self.announce(request, Call::Prepared, handle.sql, params, Some(handle.id))
            .await
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        tracing::debug!(rpc = "do_get_prepared_statement");
        Ok(Response::new(
            self.prepared_results(cmd, request).await?.encode(),
        ))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let client = self.client(&request).await?;
        let req = self.request(client, &request, Call::Update, cmd.query, None)?;
        Ok(self.queries.update(req).await?)
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let client = self.client(&request).await?;
        let handle = PreparedHandle::decode(&cmd.prepared_statement_handle)?;
        let params = self.bound(&client, &handle);
        let mut req = self.request(client, &request, Call::PreparedUpdate, handle.sql, params)?;
        req.prepared = Some(handle.id);
        Ok(self.queries.update(req).await?)
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let session = self.client(&request).await?.session()?;
        let mut b = query.into_builder();
        if let Some(catalog) = session.context().catalog(CATALOG) {
            let mut names = catalog.schema_names();
            names.sort();
            for s in names {
                b.append(CATALOG, s);
            }
        }
        one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let session = self.client(&request).await?.session()?;
        let mut b = query.into_builder();
        for t in session.visible_tables().await {
            let notes = t
                .def
                .as_ref()
                .map(|d| metadata::column_notes(&session, d))
                .unwrap_or_default();
            let s = metadata::table_schema(CATALOG, &t.schema, &t.table, &t.columns, &notes);
            b.append(CATALOG, &t.schema, &t.table, t.kind, &s)
                .map_err(|e| Error::encode("a table list", e))?;
        }
        one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        let mut b = query.into_builder();
        b.append("SYSTEM TABLE");
        b.append("TABLE");
        b.append("VIEW");
        one_batch(b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        one_batch(query.into_builder(&self.sql_info).build())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::primary_keys_schema(), query.as_any())
            .await
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let session = self.client(&request).await?.session()?;
        let mut rows = Vec::new();
        for t in session.visible_tables().await {
            if query.catalog.as_deref().is_some_and(|c| c != CATALOG)
                || query.db_schema.as_deref().is_some_and(|s| s != t.schema)
                || query.table != t.table
            {
                continue;
            }
            let Some(def) = &t.def else { continue };
            for (i, col) in def.primary_key().iter().enumerate() {
                rows.push(metadata::PrimaryKeyRow {
                    catalog: CATALOG.to_string(),
                    schema: t.schema.clone(),
                    table: t.table.clone(),
                    column: col.to_string(),
                    sequence: i as i32 + 1,
                });
            }
        }
        one_batch(metadata::primary_keys_batch(&rows))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::foreign_keys_schema(), query.as_any())
            .await
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        one_batch::<std::convert::Infallible>(Ok(metadata::empty_foreign_keys()))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::foreign_keys_schema(), query.as_any())
            .await
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        one_batch::<std::convert::Infallible>(Ok(metadata::empty_foreign_keys()))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(request, &metadata::foreign_keys_schema(), query.as_any())
            .await
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        one_batch::<std::convert::Infallible>(Ok(metadata::empty_foreign_keys()))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc).schema();
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        one_batch(query.into_builder(&self.xdbc).build())
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        self.client(&request).await?;
        Err(Error::BadRequest(format!("unsupported ticket type {}", message.type_url)).into())
    }

    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        let client = self.client(&request).await?;
        let body = &request.get_ref().body;
        let result = match request.get_ref().r#type.as_str() {
            "SetSessionOptions" => actions::set_session_options(&client, body)?,
            "GetSessionOptions" => actions::get_session_options(&client),
            "CancelFlightInfo" => actions::cancel_flight_info(&self.cancels, body)?,
            "CloseSession" => actions::close_session(&self.auth, request.metadata()),
            other => {
                return Err(Error::BadRequest(format!("unknown action `{other}`")).into());
            }
        };
        let result = arrow_flight::Result {
            body: result.into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
            result,
        )]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<arrow_flight::ActionType, Status>>> {
        Some(
            actions::ACTIONS
                .into_iter()
                .map(|t| {
                    Ok(arrow_flight::ActionType {
                        r#type: t.to_string(),
                        description: format!("Flight {t}"),
                    })
                })
                .collect(),
        )
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
