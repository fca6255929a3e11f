//! `meshq import`: product manifests and contracts written for other tools
//! — data-mesh manifests (`apiVersion: datamesh/v1`) and the Data Contract
//! Specification 0.9.3 — as ODPS 1.0 products and ODCS 3.1 contracts meshq
//! serves. Whatever has no equivalent is kept as a `text` quality rule or
//! left out, and the report says which, element by element: nothing is
//! dropped silently.

mod common;
mod datamesh;
mod dcs;
mod model;
mod rules;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use common::{Note, NoteKind, Notes};

/// The source format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// `apiVersion: datamesh/v1`, `kind: DataProduct` manifests.
    #[value(name = "datamesh-v1")]
    DatameshV1,
    /// Data Contract Specification 0.9.3 (`dataContractSpecification`).
    Dcs,
}

/// One converted document: a product and its contracts (file stem,
/// contract).
pub(crate) struct Imported {
    product: model::Product,
    contracts: Vec<(String, model::Contract)>,
}

/// What became of one source document.
#[derive(Debug)]
pub struct Report {
    /// The source file (and document, when it holds several).
    pub source: String,
    /// The files written, relative to the output folder.
    pub written: Vec<PathBuf>,
    /// What changed, was kept as text, or was not converted.
    pub notes: Notes,
    /// Why nothing was written.
    pub error: Option<String>,
}

/// Converts every document of `files` into `out` (`DOMAIN/NAME.odps.yaml`
/// and `DOMAIN/TABLE.odcs.yaml`). A source that cannot be converted, or
/// whose files exist (without `force`), writes nothing and is reported;
/// the others are written.
pub fn import(
    source: Source,
    files: &[PathBuf],
    out: &Path,
    domain: Option<&str>,
    force: bool,
) -> Vec<Report> {
    let mut reports = Vec::new();
    let mut planned: Vec<PathBuf> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                reports.push(Report {
                    source: file.display().to_string(),
                    written: Vec::new(),
                    notes: Notes::default(),
                    error: Some(format!("cannot read it: {e}")),
                });
                continue;
            }
        };
        let docs: Vec<serde_yaml_ng::Value> = {
            use serde::Deserialize;
            let mut docs = Vec::new();
            let mut error = None;
            for d in serde_yaml_ng::Deserializer::from_str(&text) {
                match serde_yaml_ng::Value::deserialize(d) {
                    Ok(v) if !v.is_null() => docs.push(v),
                    Ok(_) => {}
                    Err(e) => {
                        error = Some(format!("not valid YAML: {e}"));
                        break;
                    }
                }
            }
            if let Some(error) = error {
                reports.push(Report {
                    source: file.display().to_string(),
                    written: Vec::new(),
                    notes: Notes::default(),
                    error: Some(error),
                });
                continue;
            }
            docs
        };
        let several = docs.len() > 1;
        for (i, doc) in docs.iter().enumerate() {
            let name = if several {
                format!("{} (document {})", file.display(), i + 1)
            } else {
                file.display().to_string()
            };
            let mut notes = Notes::default();
            let converted = match doc.as_mapping() {
                None => Err("the document is not a mapping".to_string()),
                Some(m) => match source {
                    Source::DatameshV1 => datamesh::convert(m, domain, &mut notes),
                    Source::Dcs => dcs::convert(m, domain, &mut notes),
                },
            };
            let report = match converted {
                Ok(imported) => write(imported, out, force, &mut planned, name, notes),
                Err(e) => Report {
                    source: name,
                    written: Vec::new(),
                    notes,
                    error: Some(e),
                },
            };
            reports.push(report);
        }
    }
    reports
}

/// Writes one converted document, unless one of its files exists (and
/// `force` is off) or another document of this run writes it.
fn write(
    imported: Imported,
    out: &Path,
    force: bool,
    planned: &mut Vec<PathBuf>,
    source: String,
    notes: Notes,
) -> Report {
    let domain = imported.product.domain.clone();
    let product_slug = common::slug(imported.product.id.rsplit(':').next().unwrap_or_default());
    let mut files: Vec<(PathBuf, String)> = vec![(
        PathBuf::from(&domain).join(format!("{product_slug}.odps.yaml")),
        imported.product.to_yaml(),
    )];
    for (stem, c) in &imported.contracts {
        files.push((
            PathBuf::from(&domain).join(format!("{stem}.odcs.yaml")),
            c.to_yaml(),
        ));
    }
    let fail = |notes, error: String| Report {
        source: source.clone(),
        written: Vec::new(),
        notes,
        error: Some(error),
    };
    for (rel, _) in &files {
        if planned.contains(rel) {
            return fail(
                notes,
                format!(
                    "`{}` is also written by another source of this import; give them different names or domains",
                    rel.display()
                ),
            );
        }
        if !force && out.join(rel).exists() {
            return fail(
                notes,
                format!(
                    "`{}` exists; nothing written for this source (--force replaces it)",
                    out.join(rel).display()
                ),
            );
        }
    }
    for (rel, text) in &files {
        let path = out.join(rel);
        let header = format!(
            "# Imported by `meshq import` from {}; see import-report.md for what changed.\n",
            Path::new(&source)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| source.clone())
        );
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, format!("{header}{text}")));
        if let Err(e) = written {
            return fail(notes, format!("cannot write {}: {e}", path.display()));
        }
    }
    planned.extend(files.iter().map(|(r, _)| r.clone()));
    Report {
        source,
        written: files.into_iter().map(|(r, _)| r).collect(),
        notes,
        error: None,
    }
}

/// The report as Markdown: per source, the files written and every note,
/// grouped by kind.
pub fn render(reports: &[Report], from: Source) -> String {
    let mut s = String::new();
    let format = match from {
        Source::DatameshV1 => "data-mesh manifests (datamesh/v1)",
        Source::Dcs => "Data Contract Specification 0.9.3",
    };
    let _ = writeln!(
        s,
        "# Import report\n\nFrom {format} to ODPS 1.0 and ODCS 3.1.\n"
    );
    for r in reports {
        let _ = writeln!(s, "## {}\n", r.source);
        match &r.error {
            Some(e) => {
                let _ = writeln!(s, "**Not imported:** {e}\n");
            }
            None => {
                let _ = writeln!(s, "Written:");
                for w in &r.written {
                    let _ = writeln!(s, "- `{}`", w.display());
                }
                let _ = writeln!(s);
            }
        }
        for kind in [
            NoteKind::NotConverted,
            NoteKind::KeptAsText,
            NoteKind::Changed,
        ] {
            let notes: Vec<&Note> = r.notes.0.iter().filter(|n| n.kind == kind).collect();
            if notes.is_empty() {
                continue;
            }
            let title = match kind {
                NoteKind::NotConverted => "Not converted",
                NoteKind::KeptAsText => "Kept as `text` quality rules (listed, not run)",
                NoteKind::Changed => "Converted with a change",
            };
            let _ = writeln!(s, "{title}:");
            for n in notes {
                let _ = writeln!(s, "- `{}`: {}", n.path, n.text);
            }
            let _ = writeln!(s);
        }
    }
    s
}

/// One line per source for the terminal.
pub fn summary(reports: &[Report]) -> String {
    let mut s = String::new();
    for r in reports {
        let count = |k| r.notes.0.iter().filter(|n| n.kind == k).count();
        match &r.error {
            Some(e) => {
                let _ = writeln!(s, "{}: not imported: {e}", r.source);
            }
            None => {
                let _ = writeln!(
                    s,
                    "{}: wrote {}; {} not converted, {} kept as text, {} changed",
                    r.source,
                    r.written
                        .iter()
                        .map(|w| w.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    count(NoteKind::NotConverted),
                    count(NoteKind::KeptAsText),
                    count(NoteKind::Changed),
                );
            }
        }
    }
    s
}
