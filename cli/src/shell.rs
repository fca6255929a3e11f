//! `meshq shell`: run SQL over the mesh, interactively or from `-c`/`-f`.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use meshq_engine::{Engine, MeshSession, Principal};

use crate::output::{OutputFormat, write_stream, write_table};

const HELP: &str = "\
SQL statements end with `;` and may span lines.
  \\dt [PATTERN]   list tables (domain, table, format, product)
  \\dn             list schemas (domains)
  \\d TABLE        describe a table's columns as its contract declares them,
                  and which are masked for you
  \\dp [PATTERN]   list data products: owner, status, freshness, whether you may read them
  \\access [TABLE] why you may (or may not) read a table; the filters and masks on you
  \\lineage        which products feed which
  \\?              this help
  \\q              quit (or Ctrl-D)
Tables are named domain.table, e.g. SELECT * FROM sales.orders LIMIT 5;";

/// A SQL session over an engine.
pub struct Shell {
    engine: Engine,
    session: MeshSession,
    format: OutputFormat,
}

impl Shell {
    /// A shell with a fresh session for `principal`.
    pub fn new(engine: Engine, principal: &Principal, format: OutputFormat) -> Self {
        let session = engine.session(principal);
        Self {
            engine,
            session,
            format,
        }
    }

    /// Runs every statement in `text` in order; stops at the first error.
    pub async fn run_sql(&self, text: &str, out: &mut (dyn Write + Send)) -> Result<()> {
        let statements = self.session.parse(text)?;
        for stmt in statements {
            let plan = self.session.plan_statement(stmt).await?;
            let df = self.session.run(plan).await?;
            let stream = df.execute_stream().await?;
            write_stream(stream, self.format, out).await?;
        }
        Ok(())
    }

    /// Runs a script as `-c` and `-f` give it: SQL statements, and backslash
    /// commands on lines of their own. Stops at the first error.
    pub async fn run_script(&self, text: &str, out: &mut (dyn Write + Send)) -> Result<()> {
        let mut sql = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('\\') && sql.trim().is_empty() {
                sql.clear();
                if self.run_meta(trimmed, out).await? {
                    return Ok(());
                }
                continue;
            }
            sql.push_str(line);
            sql.push('\n');
            if trimmed.ends_with(';') {
                self.run_sql(&sql, out).await?;
                sql.clear();
            }
        }
        if !sql.trim().is_empty() {
            self.run_sql(&sql, out).await?;
        }
        Ok(())
    }

    /// Runs a backslash command. Returns `true` to quit.
    pub async fn run_meta(&self, line: &str, out: &mut (dyn Write + Send)) -> Result<bool> {
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or_default();
        let arg = parts.next();
        match cmd {
            "\\q" => return Ok(true),
            "\\?" | "\\h" => writeln!(out, "{HELP}")?,
            "\\dt" => self.list_tables(arg, out).await?,
            "\\dn" => {
                self.run_sql(
                    "SELECT schema_name AS domain FROM information_schema.schemata \
                     WHERE catalog_name = 'mesh' AND schema_name NOT IN ('information_schema', 'public', 'meta') \
                     ORDER BY 1",
                    out,
                )
                .await?
            }
            "\\dp" => {
                let filter = match arg {
                    Some(p) => format!(
                        "WHERE p.product_id ILIKE '%{0}%' OR p.name ILIKE '%{0}%' OR p.domain ILIKE '%{0}%'",
                        sql_text(p)?
                    ),
                    None => String::new(),
                };
                self.run_sql(
                    &format!(
                        "SELECT p.product_id AS product, p.domain, p.owner_team AS owner, p.status, \
                         CASE WHEN bool_or(t.freshness_status = 'late') THEN 'late' \
                              WHEN bool_and(t.freshness_status = 'fresh') THEN 'fresh' \
                              ELSE 'unknown' END AS freshness, \
                         p.readable, array_to_string(p.access_approvers, ', ') AS ask \
                         FROM meta.products p LEFT JOIN meta.tables t ON t.product_id = p.product_id \
                         {filter} GROUP BY p.product_id, p.domain, p.owner_team, p.status, p.readable, p.access_approvers \
                         ORDER BY 2, 1;"
                    ),
                    out,
                )
                .await?
            }
            "\\access" => {
                let filter = match arg {
                    Some(t) => format!(
                        "WHERE table_schema || '.' || table_name = '{}'",
                        sql_text(t)?
                    ),
                    None => String::new(),
                };
                self.run_sql(
                    &format!(
                        "SELECT table_schema || '.' || table_name AS \"table\", readable, reason, \
                         array_to_string(row_filters, '; ') AS row_filters, \
                         array_to_string(masked_columns, '; ') AS masked_columns \
                         FROM meta.my_access {filter} ORDER BY 1;"
                    ),
                    out,
                )
                .await?
            }
            "\\lineage" => {
                self.run_sql(
                    "SELECT from_product, to_product, via FROM meta.lineage ORDER BY 1, 2;",
                    out,
                )
                .await?
            }
            "\\d" => match arg {
                Some(t) => self.describe(t, out).await?,
                None => self.list_tables(None, out).await?,
            },
            other => return Err(anyhow!("unknown command `{other}`; try \\?")),
        }
        Ok(false)
    }

    async fn list_tables(&self, pattern: Option<&str>, out: &mut (dyn Write + Send)) -> Result<()> {
        let (mut domains, mut names, mut formats, mut products) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for t in self.session.visible_tables().await {
            let qualified = format!("{}.{}", t.schema, t.table);
            if pattern.is_some_and(|p| !qualified.contains(p)) {
                continue;
            }
            formats.push(
                t.def
                    .as_ref()
                    .map(|d| d.source.format.to_string())
                    .unwrap_or_else(|| "session".into()),
            );
            products.push(
                t.def
                    .as_ref()
                    .map(|d| d.product_id.clone())
                    .unwrap_or_default(),
            );
            domains.push(t.schema);
            names.push(t.table);
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("domain", DataType::Utf8, false),
            Field::new("table", DataType::Utf8, false),
            Field::new("format", DataType::Utf8, false),
            Field::new("product", DataType::Utf8, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(domains)),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(formats)),
            Arc::new(StringArray::from(products)),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), cols)?;
        write_table(&schema, &[batch], out)
    }

    async fn describe(&self, name: &str, out: &mut (dyn Write + Send)) -> Result<()> {
        let provider = self.session.context().table_provider(name).await?;
        let (domain, table) = name.split_once('.').unwrap_or(("", name));
        let def = self.engine.mesh().table(domain, table);
        let access = def.and_then(|d| {
            meshq_engine::meta::access_of(
                &self.engine,
                &d.qualified_name(),
                self.session.principal(),
            )
        });
        let arrow_schema = provider.schema();
        let mut cols: [Vec<String>; 6] = Default::default();
        for f in arrow_schema.fields() {
            let c = def.and_then(|d| d.columns.iter().find(|c| &c.name == f.name()));
            cols[0].push(f.name().clone());
            cols[1].push(f.data_type().to_string());
            cols[2].push(if f.is_nullable() { "YES" } else { "NO" }.into());
            cols[3].push(c.and_then(|c| c.classification.clone()).unwrap_or_default());
            cols[4].push(
                access
                    .iter()
                    .flat_map(|a| a.masks.iter())
                    .find(|m| &m.column == f.name())
                    .map(|m| format!("{} ({})", m.kind, m.source))
                    .unwrap_or_default(),
            );
            cols[5].push(c.and_then(|c| c.description.clone()).unwrap_or_default());
        }
        let names = [
            "column",
            "type",
            "nullable",
            "classification",
            "masked for you",
            "description",
        ];
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, false))
                .collect::<Vec<_>>(),
        ));
        let arrays: Vec<ArrayRef> = cols
            .into_iter()
            .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
        write_table(&schema, &[batch], out)
    }

    /// The interactive loop with line editing and history.
    pub async fn interactive(&self) -> Result<()> {
        use rustyline::error::ReadlineError;
        let mut editor = rustyline::DefaultEditor::new()?;
        let history =
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".meshq_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        println!(
            "meshq shell: {} table(s). \\? for help, \\q to quit.",
            self.engine.served_tables().len()
        );
        let mut buffer = String::new();
        let mut stdout = std::io::stdout();
        loop {
            let prompt = if buffer.is_empty() {
                "meshq> "
            } else {
                "    -> "
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    let trimmed = line.trim();
                    if buffer.is_empty() && trimmed.starts_with('\\') {
                        let _ = editor.add_history_entry(trimmed);
                        match self.run_meta(trimmed, &mut stdout).await {
                            Ok(true) => break,
                            Ok(false) => {}
                            Err(e) => eprintln!("Error: {}", crate::error_message(&e)),
                        }
                        continue;
                    }
                    if buffer.is_empty() && matches!(trimmed, "quit" | "exit") {
                        break;
                    }
                    if trimmed.is_empty() && buffer.is_empty() {
                        continue;
                    }
                    buffer.push_str(&line);
                    buffer.push('\n');
                    if trimmed.ends_with(';') {
                        let _ = editor.add_history_entry(buffer.trim());
                        let started = std::time::Instant::now();
                        match self.run_sql(&buffer, &mut stdout).await {
                            Ok(()) => println!("({:.3}s)", started.elapsed().as_secs_f64()),
                            Err(e) => eprintln!("Error: {}", crate::error_message(&e)),
                        }
                        buffer.clear();
                    }
                }
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }
}

/// A pattern or table name put into a SQL string literal; quotes refused.
fn sql_text(s: &str) -> Result<&str> {
    if s.contains(['\'', '\\']) {
        return Err(anyhow!(
            "`{s}`: quotes and backslashes are not allowed here"
        ));
    }
    Ok(s)
}
