//! `meshq validate`: every problem, file by file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use meshq_catalog::Problem;
use meshq_engine::Engine;

/// Prints problems grouped by file, then a summary. Returns whether there
/// were errors.
pub fn report(engine: &Engine, out: &mut (dyn Write + Send)) -> Result<bool> {
    let mut problems = engine.problems().to_vec();
    for p in meshq_flight_server::auth::check_auth_config(&engine.mesh().config) {
        problems.push(Problem::error(meshq_catalog::platform::PLATFORM_FILE, p));
    }
    problems.extend(crate::rego::evaluate(engine.mesh()));
    let problems = &problems;
    print_problems(problems, out)?;
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let warnings = problems.len() - errors;
    writeln!(
        out,
        "{} table(s) served; {errors} error(s), {warnings} warning(s)",
        engine.served_tables().len()
    )?;
    Ok(errors > 0)
}

/// Problems grouped by file (files sorted), errors before warnings, each
/// with its line when known.
pub fn print_problems(problems: &[Problem], out: &mut (dyn Write + Send)) -> Result<()> {
    let mut by_file: BTreeMap<PathBuf, Vec<&Problem>> = BTreeMap::new();
    for p in problems {
        by_file.entry(p.file.clone()).or_default().push(p);
    }
    for (file, mut ps) in by_file {
        ps.sort_by_key(|p| (p.severity, p.line));
        writeln!(out, "{}", file.display())?;
        for p in ps {
            match p.line {
                Some(l) => writeln!(out, "  {}: line {l}: {}", p.severity, p.message)?,
                None => writeln!(out, "  {}: {}", p.severity, p.message)?,
            }
        }
    }
    Ok(())
}
