//! Writing query results as a table, CSV or JSON.

use std::io::Write;

use anyhow::Result;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

/// Result formats of the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text table (reads the whole result to size the columns).
    Table,
    /// CSV with a header row, streamed.
    Csv,
    /// A JSON array of row objects, streamed.
    Json,
}

/// Writes a result stream; returns the number of rows.
pub async fn write_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<usize> {
    let schema = stream.schema();
    let mut rows = 0;
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows();
                batches.push(b);
            }
            write_table(&schema, &batches, out)?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote = false;
            while let Some(b) = stream.next().await {
                let b = flatten_nested(&b?)?;
                rows += b.num_rows();
                w.write(&b)?;
                wrote = true;
            }
            drop(w);
            if !wrote {
                // The writer emits the header with the first batch.
                let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}", names.join(","))?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows();
                w.write(&b)?;
            }
            // With no batches the writer still emits `[]`.
            w.finish()?;
            drop(w);
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(rows)
}

/// Writes batches as an aligned table; the header is shown even with no rows.
pub fn write_table(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let text = arrow::util::pretty::pretty_format_batches_with_schema(
        std::sync::Arc::clone(schema),
        batches,
    )?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// CSV has no lists or structs: such columns are written as their text
/// (`[a, b]`, as the table format shows them).
fn flatten_nested(batch: &arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch> {
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let nested = |t: &DataType| t.is_nested();
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| nested(f.data_type()))
    {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default();
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<arrow::array::ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if !nested(f.data_type()) {
            fields.push(f.as_ref().clone());
            columns.push(std::sync::Arc::clone(c));
            continue;
        }
        let formatter = ArrayFormatter::try_new(c.as_ref(), &options)?;
        let text: arrow::array::StringArray = (0..c.len())
            .map(|i| (!c.is_null(i)).then(|| formatter.value(i).to_string()))
            .collect();
        fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
        columns.push(std::sync::Arc::new(text));
    }
    Ok(arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}
