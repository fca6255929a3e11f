//! The last quality results of each served table, kept across reloads for
//! as long as the table's definition is unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshq_catalog::TableDef;
use parking_lot::RwLock;

use super::TableReport;
use crate::engine::ServedTable;

/// A table's latest report and the definition it was checked against.
type Entry = (Arc<TableDef>, Arc<TableReport>);

/// Latest [`TableReport`] per table, shared by every version of a served
/// mesh.
#[derive(Debug, Default)]
pub struct QualityBoard {
    reports: RwLock<BTreeMap<String, Entry>>,
}

impl QualityBoard {
    /// Records `report`, checked against the definition `def`.
    pub fn put(&self, def: Arc<TableDef>, report: TableReport) {
        self.reports
            .write()
            .insert(def.qualified_name(), (def, Arc::new(report)));
    }

    /// The latest results of `table`, if they were checked against its
    /// current definition (a changed contract means unknown until checked
    /// again).
    pub fn latest(&self, table: &ServedTable) -> Option<Arc<TableReport>> {
        let reports = self.reports.read();
        let (def, report) = reports.get(&table.def.qualified_name())?;
        (Arc::ptr_eq(def, &table.def) || **def == *table.def).then(|| Arc::clone(report))
    }

    /// Forgets tables no longer served.
    pub fn retain(&self, served: &[ServedTable]) {
        self.reports
            .write()
            .retain(|name, _| served.iter().any(|t| &t.def.qualified_name() == name));
    }
}
