//! The catalog's pages and JSON endpoints. Each reads the `meta` schema in
//! the visitor's session (what `meta` shows them, under their policies);
//! `/sql` runs through the Flight SQL statement path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::html::{Rows, badge, lineage_svg, page, table as result_table};
use super::{COOKIE, Visitor, WebState};
use crate::query::{Call, QueryId, QueryRequest};

/// Rows shown of a `/sql` result (the downloads have them all).
const SHOWN_ROWS: usize = 500;

/// A page that could not be built: its message, as a page or JSON.
pub(crate) struct Failed(StatusCode, String);

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn to_rows(batches: &[RecordBatch]) -> Result<Rows, String> {
    to_rows_upto(batches, usize::MAX)
}

/// The first `limit` rows as text (the count of all is the batches').
fn to_rows_upto(batches: &[RecordBatch], limit: usize) -> Result<Rows, String> {
    let mut out = Rows::default();
    let Some(first) = batches.first() else {
        return Ok(out);
    };
    out.columns = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let options = FormatOptions::default().with_null("");
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for i in 0..b.num_rows() {
            if out.rows.len() >= limit {
                return Ok(out);
            }
            out.rows.push(
                b.columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(i)).then(|| f.value(i).to_string()))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Runs a `meta` query in the visitor's session.
async fn batches(v: &Visitor, sql: &str) -> Result<Vec<RecordBatch>, Failed> {
    let session = v
        .client
        .session()
        .map_err(|e| Failed(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let df = session.sql(sql).await.map_err(|e| {
        Failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            meshq_engine::error_message(&e),
        )
    })?;
    df.collect().await.map_err(|e| {
        Failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            meshq_engine::error_message(&e),
        )
    })
}

async fn rows(v: &Visitor, sql: &str) -> Result<Rows, Failed> {
    to_rows(&batches(v, sql).await?).map_err(|e| Failed(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// Batches as a JSON array of objects.
fn json(batches: &[RecordBatch]) -> Response {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        if let Err(e) = writer.write(b) {
            return Failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
    }
    if let Err(e) = writer.finish() {
        return Failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let mut body = writer.into_inner();
    if body.is_empty() {
        body = b"[]".to_vec();
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn html_page(m: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn framed(state: &WebState, v: &Visitor, title: &str, body: Markup) -> Response {
    let who = v.client.principal().display_name().to_string();
    html_page(page(title, Some(&who), Some(&state.csrf(&v.token)), body))
}

const PRODUCTS_SQL: &str = "SELECT product_id, name, domain, version, status, description, owner_team, \
     array_to_string(owner_contacts, ', ') AS owner_contacts, array_to_string(tags, ', ') AS tags, \
     array_to_string(input_products, ', ') AS input_products, array_to_string(tables, ', ') AS tables, \
     readable, array_to_string(access_roles, ', ') AS access_roles, \
     array_to_string(access_approvers, ', ') AS access_approvers FROM meta.products";

/// The worst of the statuses of a product's tables, per product.
async fn statuses(v: &Visitor) -> Result<HashMap<String, (String, String)>, Failed> {
    let t = rows(
        v,
        "SELECT product_id, freshness_status, quality_status FROM meta.tables",
    )
    .await?;
    let rank = |s: &str| match s {
        "late" | "failed" => 3,
        "error" | "warning" => 2,
        "unknown" => 1,
        _ => 0,
    };
    let mut out: HashMap<String, (String, String)> = HashMap::new();
    for i in t.indexes() {
        let id = t.get(i, "product_id").unwrap_or_default().to_string();
        let f = t
            .get(i, "freshness_status")
            .unwrap_or("unknown")
            .to_string();
        let q = t.get(i, "quality_status").unwrap_or("unknown").to_string();
        let e = out.entry(id).or_insert((f.clone(), q.clone()));
        if rank(&f) > rank(&e.0) {
            e.0 = f;
        }
        if rank(&q) > rank(&e.1) {
            e.1 = q;
        }
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Search {
    #[serde(default)]
    q: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    tag: String,
}

fn matches(p: &Rows, i: usize, s: &Search) -> bool {
    let field = |c: &str| p.get(i, c).unwrap_or_default().to_lowercase();
    let q = s.q.trim().to_lowercase();
    let text_ok = q.is_empty()
        || [
            "product_id",
            "name",
            "description",
            "tags",
            "domain",
            "owner_team",
            "tables",
        ]
        .iter()
        .any(|c| field(c).contains(&q));
    let domain_ok = s.domain.is_empty() || field("domain") == s.domain.to_lowercase();
    let tag_ok = s.tag.is_empty() || field("tags").split(", ").any(|t| t == s.tag.to_lowercase());
    text_ok && domain_ok && tag_ok
}

/// `/` and `/products`: search and browse.
pub(crate) async fn products(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Query(s): Query<Search>,
) -> Result<Response, Failed> {
    state.page_view(&v, "/products");
    let p = rows(&v, &format!("{PRODUCTS_SQL} ORDER BY domain, name")).await?;
    let status = statuses(&v).await?;
    let mut domains: Vec<&str> = p.indexes().filter_map(|i| p.get(i, "domain")).collect();
    domains.sort();
    domains.dedup();
    let shown: Vec<usize> = p.indexes().filter(|i| matches(&p, *i, &s)).collect();
    let body = html! {
        h1 { "Data products" }
        form.search method="get" action="/products" role="search" {
            label for="q" { "Search" }
            input #q type="search" name="q" value=(s.q) placeholder="name, description, tag, table";
            label for="domain" { "Domain" }
            select #domain name="domain" {
                option value="" { "all" }
                @for d in &domains { option value=(d) selected[*d == s.domain] { (d) } }
            }
            @if !s.tag.is_empty() { input type="hidden" name="tag" value=(s.tag); }
            button type="submit" { "Search" }
        }
        p.muted { (shown.len()) " of " (p.rows.len()) " products" }
        @for i in shown {
            @let id = p.get(i, "product_id").unwrap_or_default();
            @let (fresh, quality) = status.get(id).cloned().unwrap_or_else(|| ("unknown".into(), "unknown".into()));
            article.card {
                h2 { a href=(format!("/products/{}", super::form_urlencoded(id))) { (p.get(i, "name").unwrap_or(id)) } }
                p.muted { (id) " · domain " (p.get(i, "domain").unwrap_or("")) " · owner " (p.get(i, "owner_team").unwrap_or("unknown")) }
                @if let Some(d) = p.get(i, "description") { p { (d) } }
                p {
                    (badge("freshness", Some(&fresh)))
                    (badge("quality", Some(&quality)))
                    @if p.get(i, "readable") == Some("true") {
                        span.badge.ok { "you may read it" }
                    } @else {
                        span.badge.bad { "you may not read it" }
                        " Ask " (p.get(i, "access_approvers").filter(|a| !a.is_empty()).or(p.get(i, "owner_contacts")).unwrap_or("its owners"))
                        @if let Some(r) = p.get(i, "access_roles").filter(|r| !r.is_empty()) { " for one of the roles " (r) }
                    }
                }
                @if let Some(tags) = p.get(i, "tags").filter(|t| !t.is_empty()) {
                    p { @for t in tags.split(", ") { a.badge href=(format!("/products?tag={}", super::form_urlencoded(t))) { (t) } } }
                }
            }
        }
    };
    Ok(framed(&state, &v, "Data products", body))
}

/// `/products/{id}`.
pub(crate) async fn product(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, Failed> {
    state.page_view(&v, &format!("/products/{id}"));
    let lit = sql_literal(&id);
    let p = rows(&v, &format!("{PRODUCTS_SQL} WHERE product_id = {lit}")).await?;
    if p.rows.is_empty() {
        return Ok((
            StatusCode::NOT_FOUND,
            framed(&state, &v, "Not found", html! { h1 { "No product " (id) } p { "It does not exist, or the mesh does not show it to you." } }),
        )
            .into_response());
    }
    let tables = rows(
        &v,
        &format!(
            "SELECT table_schema || '.' || table_name AS table_name, format, readable, row_count, \
             CAST(freshness_sla AS VARCHAR) AS freshness_sla, freshness_status, CAST(last_modified AS VARCHAR) AS last_modified, \
             quality_status, availability_sla, accelerated, materialized_at \
             FROM meta.tables WHERE product_id = {lit} ORDER BY 1"
        ),
    )
    .await?;
    let quality = rows(
        &v,
        &format!(
            "SELECT q.table_schema || '.' || q.table_name AS table_name, rule, dimension, severity, status, measured, threshold, CAST(checked_at AS VARCHAR) AS checked_at \
             FROM meta.quality q JOIN meta.tables t ON q.table_schema = t.table_schema AND q.table_name = t.table_name \
             WHERE t.product_id = {lit} ORDER BY 1, 2"
        ),
    )
    .await?;
    let lineage = rows(
        &v,
        &format!("SELECT from_product, to_product, via FROM meta.lineage WHERE from_product = {lit} OR to_product = {lit}"),
    )
    .await?;
    let edges: Vec<(String, String)> = lineage
        .indexes()
        .filter_map(|i| {
            Some((
                lineage.get(i, "from_product")?.to_string(),
                lineage.get(i, "to_product")?.to_string(),
            ))
        })
        .collect();
    let name = p.get(0, "name").unwrap_or(&id).to_string();
    let body = html! {
        h1 { (name) }
        p.muted { (id) " · version " (p.get(0, "version").unwrap_or("?")) " · " (p.get(0, "status").unwrap_or("?")) " · domain " (p.get(0, "domain").unwrap_or("")) }
        @if let Some(d) = p.get(0, "description") { p { (d) } }
        h2 { "Owner" }
        p { (p.get(0, "owner_team").unwrap_or("unknown")) @if let Some(c) = p.get(0, "owner_contacts").filter(|c| !c.is_empty()) { " — " (c) } }
        @if p.get(0, "readable") != Some("true") {
            p.error { "You may not read this product. Ask "
                (p.get(0, "access_approvers").filter(|a| !a.is_empty()).or(p.get(0, "owner_contacts")).unwrap_or("its owners"))
                @if let Some(r) = p.get(0, "access_roles").filter(|r| !r.is_empty()) { " for one of the roles " (r) } "." }
        }
        h2 { "Tables" }
        (linked_tables(&tables))
        h2 { "Quality" }
        @if quality.rows.is_empty() { p.muted { "No check has run yet." } } @else { (result_table(&quality, 1000)) }
        h2 { "Lineage" }
        @if edges.is_empty() { p.muted { "No input or output products." } } @else { (lineage_svg(&edges, Some(&id))) }
        p.muted { "Inputs: " (p.get(0, "input_products").filter(|s| !s.is_empty()).unwrap_or("none")) }
    };
    Ok(framed(&state, &v, &name, body))
}

fn linked_tables(t: &Rows) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { @for c in &t.columns { th scope="col" { (c) } } } }
            tbody { @for i in t.indexes() { tr {
                @for (k, c) in t.columns.iter().enumerate() {
                    td { @match (c.as_str(), t.rows[i][k].as_deref()) {
                        ("table_name", Some(n)) => a href=(format!("/tables/{n}")) { (n) },
                        ("freshness_status" | "quality_status", s) => (badge(c.trim_end_matches("_status"), s)),
                        (_, Some(v)) => (v),
                        (_, None) => span.null { "NULL" },
                    } }
                }
            } } }
        } }
    }
}

/// `/tables/{domain.table}`.
pub(crate) async fn table_page(
    state: &WebState,
    v: &Visitor,
    name: &str,
) -> Result<Response, Failed> {
    let Some((schema, tname)) = name.split_once('.') else {
        return Err(Failed(
            StatusCode::NOT_FOUND,
            format!("`{name}` is not domain.table"),
        ));
    };
    let (s, t) = (sql_literal(schema), sql_literal(tname));
    let info = rows(v, &format!("SELECT product_id, description, format, readable, row_count FROM meta.tables WHERE table_schema = {s} AND table_name = {t}")).await?;
    if info.rows.is_empty() {
        return Ok((
            StatusCode::NOT_FOUND,
            framed(state, v, "Not found", html! { h1 { "No table " (name) } }),
        )
            .into_response());
    }
    let access = rows(v, &format!("SELECT readable, reason, array_to_string(row_filters, '; ') AS row_filters, array_to_string(masked_columns, '; ') AS masked_columns FROM meta.my_access WHERE table_schema = {s} AND table_name = {t}")).await?;
    let columns = rows(v, &format!("SELECT column_name, data_type, logical_type, description, classification, array_to_string(tags, ', ') AS tags, masked, mask_kind, mask_source FROM meta.columns WHERE table_schema = {s} AND table_name = {t} ORDER BY ordinal_position")).await?;
    let readable = access.get(0, "readable") == Some("true");
    let product = info.get(0, "product_id").unwrap_or_default().to_string();
    let body = html! {
        h1 { (name) }
        p.muted { "Product " a href=(format!("/products/{}", super::form_urlencoded(&product))) { (product) } " · " (info.get(0, "format").unwrap_or("")) }
        @if let Some(d) = info.get(0, "description") { p { (d) } }
        h2 { "Your access" }
        @if readable {
            p { span.badge.ok { "you may read it" } " " (access.get(0, "reason").unwrap_or("")) }
            @if let Some(f) = access.get(0, "row_filters").filter(|f| !f.is_empty()) { p { "Row filters applied to you: " code { (f) } } }
            @else { p.muted { "No row filter applies to you." } }
            @if let Some(m) = access.get(0, "masked_columns").filter(|m| !m.is_empty()) { p { "Masked for you: " (m) } }
            p { a href=(format!("/sql?sql={}", super::form_urlencoded(&format!("SELECT * FROM {name} LIMIT 100")))) { "Query it" } }
        } @else {
            p.error { "You may not read this table: " (access.get(0, "reason").unwrap_or("no role of yours grants it")) ". Ask the product's owners (see the product page)." }
        }
        h2 { "Columns" }
        div.scroll { table {
            thead { tr { th { "column" } th { "type" } th { "description" } th { "classification" } th { "tags" } th { "for you" } } }
            tbody { @for i in columns.indexes() { tr {
                td { (columns.get(i, "column_name").unwrap_or("")) }
                td { (columns.get(i, "logical_type").or(columns.get(i, "data_type")).unwrap_or("")) }
                td { (columns.get(i, "description").unwrap_or("")) }
                td { (columns.get(i, "classification").unwrap_or("")) }
                td { (columns.get(i, "tags").unwrap_or("")) }
                td { @if columns.get(i, "masked") == Some("true") {
                    span.masked { "masked: " (columns.get(i, "mask_kind").unwrap_or("")) } br; span.muted { (columns.get(i, "mask_source").unwrap_or("")) }
                } @else if readable { "as stored" } @else { "—" } }
            } } }
        } }
    };
    Ok(framed(state, v, name, body))
}

pub(crate) async fn table(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Path(name): Path<String>,
) -> Result<Response, Failed> {
    state.page_view(&v, &format!("/tables/{name}"));
    table_page(&state, &v, &name).await
}

/// `/me`.
pub(crate) async fn me(State(state): State<Arc<WebState>>, v: Visitor) -> Result<Response, Failed> {
    state.page_view(&v, "/me");
    let who = rows(&v, "SELECT principal, array_to_string(roles, ', ') AS roles, CAST(attributes AS VARCHAR) AS attributes FROM meta.whoami").await?;
    let access = rows(&v, "SELECT table_schema || '.' || table_name AS table_name, readable, reason, array_to_string(row_filters, '; ') AS row_filters, array_to_string(masked_columns, '; ') AS masked_columns FROM meta.my_access ORDER BY 1").await?;
    let body = html! {
        h1 { (who.get(0, "principal").unwrap_or("?")) }
        p { "Roles: " (who.get(0, "roles").filter(|r| !r.is_empty()).unwrap_or("none")) }
        p { "Attributes: " code { (who.get(0, "attributes").unwrap_or("{}")) } }
        h2 { "What you may see" }
        (linked_tables(&access))
    };
    Ok(framed(&state, &v, "Me", body))
}

/// `/lineage`.
pub(crate) async fn lineage(
    State(state): State<Arc<WebState>>,
    v: Visitor,
) -> Result<Response, Failed> {
    state.page_view(&v, "/lineage");
    let l = rows(
        &v,
        "SELECT from_product, to_product FROM meta.lineage ORDER BY 1, 2",
    )
    .await?;
    let edges: Vec<(String, String)> = l
        .indexes()
        .filter_map(|i| {
            Some((
                l.get(i, "from_product")?.to_string(),
                l.get(i, "to_product")?.to_string(),
            ))
        })
        .collect();
    let body = html! {
        h1 { "Lineage" }
        p.muted { "Which products feed which, from their input ports and the SQL of products defined in SQL. Each box links to its product." }
        (lineage_svg(&edges, None))
    };
    Ok(framed(&state, &v, "Lineage", body))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SqlForm {
    #[serde(default)]
    sql: String,
    #[serde(default)]
    csrf: String,
    /// `html` (default), `csv` or `arrow`.
    #[serde(default)]
    format: String,
}

fn sql_page(state: &WebState, v: &Visitor, sql: &str, result: Markup) -> Response {
    let body = html! {
        h1 { "SQL" }
        p.muted { "Runs as you, under your policies, as over Flight SQL." }
        form method="post" action="/sql" {
            input type="hidden" name="csrf" value=(state.csrf(&v.token));
            label for="sql" { "Statement" }
            textarea #sql name="sql" spellcheck="false" { (sql) }
            p {
                button type="submit" name="format" value="html" { "Run" } " "
                button type="submit" name="format" value="csv" { "Download CSV" } " "
                button type="submit" name="format" value="arrow" { "Download Arrow" }
            }
        }
        (result)
    };
    framed(state, v, "SQL", body)
}

/// `GET /sql`: the form (`?sql=` fills it).
pub(crate) async fn sql_form(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Query(f): Query<SqlForm>,
) -> Response {
    state.page_view(&v, "/sql");
    sql_page(&state, &v, &f.sql, html! {})
}

/// `POST /sql`: runs the statement (CSRF-checked).
pub(crate) async fn sql_run(
    State(state): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    v: Visitor,
    Form(f): Form<SqlForm>,
) -> Response {
    if !v.csrf_ok(&state, &f.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match your session; reload the page\n",
        )
            .into_response();
    }
    let started = Instant::now();
    let request = QueryRequest {
        id: QueryId::new(),
        client: Arc::clone(&v.client),
        peer: Some(peer),
        call: Call::Statement,
        sql: f.sql.clone(),
        params: None,
        prepared: None,
        wire: Default::default(),
    };
    let ticket = rand::random::<[u8; 16]>().to_vec();
    let result = match state.queries.stream(request, ticket, None).await {
        Ok(stream) => stream.collect_all().await,
        Err(e) => Err(e),
    };
    let batches = match result {
        Ok(b) => b,
        Err(e) => {
            let status = tonic::Status::from(e);
            return sql_page(
                &state,
                &v,
                &f.sql,
                html! { p.error role="alert" { "Error: " (status.message()) } },
            );
        }
    };
    match f.format.as_str() {
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            for b in &batches {
                if let Err(e) = w.write(b) {
                    return Failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        .into_response();
                }
            }
            let body = w.into_inner();
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/csv; charset=utf-8"),
                    ),
                    (
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_static("attachment; filename=\"result.csv\""),
                    ),
                ],
                body,
            )
                .into_response()
        }
        "arrow" => {
            let schema = match batches.first() {
                Some(b) => b.schema(),
                None => Arc::new(arrow::datatypes::Schema::empty()),
            };
            let mut buf = Vec::new();
            let written =
                arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema).and_then(|mut w| {
                    for b in &batches {
                        w.write(b)?;
                    }
                    w.finish()
                });
            if let Err(e) = written {
                return Failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
            }
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/vnd.apache.arrow.stream"),
                    ),
                    (
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_static("attachment; filename=\"result.arrows\""),
                    ),
                ],
                buf,
            )
                .into_response()
        }
        _ => {
            let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let rows = match to_rows_upto(&batches, SHOWN_ROWS) {
                Ok(r) => r,
                Err(e) => return Failed(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
            };
            let took = started.elapsed();
            let result = html! {
                p.muted { (total) " row(s) in " (format!("{:.1}", took.as_secs_f64() * 1000.0)) " ms"
                    @if total > SHOWN_ROWS { "; the first " (SHOWN_ROWS) " shown (download for all)" } }
                (result_table(&rows, SHOWN_ROWS))
            };
            sql_page(&state, &v, &f.sql, result)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

fn login_page(next: &str, error: Option<&str>) -> Markup {
    page(
        "Log in",
        None,
        None,
        html! {
            form.login.card method="post" action="/login" {
                h1 { "Log in to meshq" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                input type="hidden" name="next" value=(next);
                label for="user" { "User" }
                input #user type="text" name="user" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                p { button type="submit" { "Log in" } }
            }
        },
    )
}

/// A local path to go to after logging in (never another site).
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

pub(crate) async fn login_form(Query(f): Query<LoginForm>) -> Response {
    html_page(login_page(safe_next(&f.next), None))
}

pub(crate) async fn login(
    State(state): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(&f.next).to_string();
    match state
        .auth
        .login_password(&f.user, &f.password, Some(peer))
        .await
    {
        Ok((token, _)) => {
            let ttl = state.ttl();
            state.logged_in(&token);
            let cookie = format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                ttl.as_secs(),
                if state.secure { "; Secure" } else { "" }
            );
            let mut res = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            let code = match e {
                crate::error::Error::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            };
            let status = tonic::Status::from(e);
            (code, html_page(login_page(&next, Some(status.message())))).into_response()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn logout(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !v.csrf_ok(&state, &f.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match your session\n",
        )
            .into_response();
    }
    state.auth.end(&v.token);
    state.logins.lock().remove(&v.token);
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("meshq_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        super::html::STYLE,
    )
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        html_page(page(
            "Not found",
            None,
            None,
            html! { h1 { "Not found" } p { a href="/" { "To the catalog" } } },
        )),
    )
        .into_response()
}

/// `/api/products?q=&domain=&tag=`.
pub(crate) async fn api_products(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Query(s): Query<Search>,
) -> Result<Response, Failed> {
    state.page_view(&v, "/api/products");
    let mut conditions = Vec::new();
    if !s.domain.is_empty() {
        conditions.push(format!("domain = {}", sql_literal(&s.domain)));
    }
    if !s.tag.is_empty() {
        conditions.push(format!("array_has(tags, {})", sql_literal(&s.tag)));
    }
    if !s.q.trim().is_empty() {
        let q = sql_literal(&format!("%{}%", s.q.trim().to_lowercase()));
        conditions.push(format!(
            "(lower(product_id) LIKE {q} OR lower(name) LIKE {q} OR lower(coalesce(description, '')) LIKE {q} OR lower(array_to_string(tags, ' ')) LIKE {q} OR lower(domain) LIKE {q})"
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    Ok(json(
        &batches(
            &v,
            &format!("SELECT * FROM meta.products{filter} ORDER BY product_id"),
        )
        .await?,
    ))
}

/// `/api/products/{id}`: the product, its tables and their quality.
pub(crate) async fn api_product(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, Failed> {
    state.page_view(&v, &format!("/api/products/{id}"));
    let lit = sql_literal(&id);
    let b = batches(
        &v,
        &format!("SELECT * FROM meta.products WHERE product_id = {lit}"),
    )
    .await?;
    if b.iter().all(|b| b.num_rows() == 0) {
        return Err(Failed(StatusCode::NOT_FOUND, format!("no product `{id}`")));
    }
    Ok(json(&b))
}

/// `/api/tables/{domain.table}`: its columns as you see them.
pub(crate) async fn api_table(
    State(state): State<Arc<WebState>>,
    v: Visitor,
    Path(name): Path<String>,
) -> Result<Response, Failed> {
    state.page_view(&v, &format!("/api/tables/{name}"));
    let Some((schema, table)) = name.split_once('.') else {
        return Err(Failed(
            StatusCode::NOT_FOUND,
            format!("`{name}` is not domain.table"),
        ));
    };
    let b = batches(
        &v,
        &format!(
            "SELECT * FROM meta.columns WHERE table_schema = {} AND table_name = {} ORDER BY ordinal_position",
            sql_literal(schema),
            sql_literal(table)
        ),
    )
    .await?;
    if b.iter().all(|b| b.num_rows() == 0) {
        return Err(Failed(StatusCode::NOT_FOUND, format!("no table `{name}`")));
    }
    Ok(json(&b))
}

pub(crate) async fn api_lineage(
    State(state): State<Arc<WebState>>,
    v: Visitor,
) -> Result<Response, Failed> {
    state.page_view(&v, "/api/lineage");
    Ok(json(
        &batches(&v, "SELECT * FROM meta.lineage ORDER BY 1, 2").await?,
    ))
}

pub(crate) async fn api_me(
    State(state): State<Arc<WebState>>,
    v: Visitor,
) -> Result<Response, Failed> {
    state.page_view(&v, "/api/me");
    Ok(json(
        &batches(&v, "SELECT * FROM meta.my_access ORDER BY 1, 2").await?,
    ))
}
