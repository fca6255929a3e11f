//! Finding the mesh's files by suffix and reading them, in parallel on
//! large meshes.

use std::path::{Path, PathBuf};

use super::{CONTRACT_SUFFIX, Loader, POLICY_SUFFIX, PRODUCT_SUFFIX};
use crate::problem::{Problem, display_path};
use crate::yaml;

#[derive(Default)]
pub(super) struct Files {
    pub(super) products: Vec<PathBuf>,
    pub(super) contracts: Vec<PathBuf>,
    pub(super) policies: Vec<PathBuf>,
}

/// Walks the tree in sorted order, skipping hidden folders and the insides
/// of table folders (`_delta_log`, data files), which hold no descriptors.
pub(super) fn discover(root: &Path, problems: &mut Vec<Problem>) -> Files {
    let mut files = Files::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem::warning(
                    display_path(root, &dir),
                    format!("cannot read directory: {e}"),
                ));
                continue;
            }
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        if entries.iter().any(|e| e.file_name() == "_delta_log") {
            continue;
        }
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            let is_dir = ft.is_dir() || (ft.is_symlink() && path.is_dir());
            if is_dir {
                subdirs.push(path);
            } else if name.ends_with(PRODUCT_SUFFIX) {
                files.products.push(path);
            } else if name.ends_with(CONTRACT_SUFFIX) {
                files.contracts.push(path);
            } else if name.ends_with(POLICY_SUFFIX) {
                files.policies.push(path);
            }
        }
        // Reverse so the stack visits folders in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    files.products.sort();
    files.contracts.sort();
    files.policies.sort();
    files
}

impl Loader {
    pub(super) fn read_and_parse<T: serde::de::DeserializeOwned>(
        &mut self,
        file: &Path,
    ) -> Option<(T, String)> {
        let parsed = read_and_parse(file);
        self.take_parsed(file, parsed)
    }

    /// The parsed file, or `None` after recording why it could not be.
    pub(super) fn take_parsed<T>(&mut self, file: &Path, parsed: Parsed<T>) -> Option<(T, String)> {
        match parsed {
            Ok(v) => Some(v),
            Err((line, message)) => {
                self.error(file, line, message);
                None
            }
        }
    }
}

/// A file's parsed value and text, or the line and message of why not.
pub(super) type Parsed<T> = std::result::Result<(T, String), (Option<usize>, String)>;

fn read_and_parse<T: serde::de::DeserializeOwned>(file: &Path) -> Parsed<T> {
    let text =
        std::fs::read_to_string(file).map_err(|e| (None, format!("cannot read file: {e}")))?;
    match yaml::parse::<T>(&text) {
        Ok(v) => Ok((v, text)),
        Err(e) => Err((e.line, e.message)),
    }
}

/// Reads and parses `files` on every core, results in file order. YAML
/// parsing is most of the time a large mesh takes to load.
pub(super) fn parse_all<T: serde::de::DeserializeOwned + Send>(
    files: &[PathBuf],
) -> Vec<Parsed<T>> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if workers < 2 || files.len() < 64 {
        return files.iter().map(|f| read_and_parse(f)).collect();
    }
    let chunk = files.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                let h = scope.spawn(move || part.iter().map(|f| read_and_parse(f)).collect());
                (part.len(), h)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    // A panic in the YAML parser: each file of the chunk is
                    // reported, and the results stay aligned with `files`.
                    (0..n)
                        .map(|_| {
                            Err((
                                None,
                                "the YAML parser failed on this part of the mesh".to_string(),
                            ))
                        })
                        .collect::<Vec<Parsed<T>>>()
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_parsing_keeps_file_order_and_reports_each_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..200 {
            let f = dir.path().join(format!("p{i:03}.yaml"));
            let text = if i % 50 == 7 {
                format!("id: [broken {i}\n")
            } else {
                format!("id: product-{i}\n")
            };
            std::fs::write(&f, text).unwrap();
            files.push(f);
        }
        files.push(dir.path().join("missing.yaml"));
        #[derive(serde::Deserialize)]
        struct Doc {
            id: String,
        }
        let parsed = parse_all::<Doc>(&files);
        assert_eq!(parsed.len(), files.len());
        for (i, p) in parsed.iter().enumerate().take(200) {
            match p {
                Ok((d, _)) => assert_eq!(d.id, format!("product-{i}")),
                Err((line, _)) => {
                    assert_eq!(i % 50, 7, "file {i}");
                    assert_eq!(*line, Some(1));
                }
            }
        }
        let Err((_, msg)) = &parsed[200] else {
            panic!("a missing file parses")
        };
        assert!(msg.starts_with("cannot read file"), "{msg}");
    }
}
