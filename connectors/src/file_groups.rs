//! Files dealt into scan partitions, with the statistics join planning
//! reads: DataFusion's listing tables attach them; the Delta and Iceberg
//! providers build their file groups themselves and attach them here.

use datafusion::common::{Result, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileGroup;
use std::sync::Arc;

use arrow::datatypes::Schema;

/// `files` dealt round-robin into at most `partitions` groups, larger
/// files first, each group with the merge of its files' statistics, and
/// the merge over all groups. Without statistics for every file, the
/// groups and the scan carry none (a partial sum would undercount).
pub(crate) fn grouped(
    mut files: Vec<PartitionedFile>,
    partitions: usize,
    schema: &Schema,
) -> Result<(Vec<FileGroup>, Option<Statistics>)> {
    let partitions = partitions.max(1).min(files.len().max(1));
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let complete = files.iter().all(|f| f.statistics.is_some());
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
    for (i, f) in files.into_iter().enumerate() {
        groups[i % partitions].push(f);
    }
    if !complete {
        return Ok((groups.into_iter().map(FileGroup::new).collect(), None));
    }
    let mut out = Vec::with_capacity(groups.len());
    for files in groups {
        let stats = Statistics::try_merge_iter(
            files.iter().filter_map(|f| f.statistics.as_deref()),
            schema,
        )?;
        out.push(FileGroup::new(files).with_statistics(Arc::new(stats)));
    }
    let total =
        Statistics::try_merge_iter(out.iter().filter_map(|g| g.file_statistics(None)), schema)?;
    Ok((out, Some(total)))
}
