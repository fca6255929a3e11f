//! Files SQL statements may read and write: the scratch and export
//! locations of `meshq.yaml` (`files:`), and nothing else.
//!
//! `CREATE EXTERNAL TABLE` (and `INSERT` into such a table) works only under
//! `files.scratch`, `COPY … TO` only under `files.export`; with neither set,
//! both are refused. A location a statement names is resolved — URL
//! decoded, made absolute against the area, symlinks and `/proc/self/…`
//! links followed — and must lie inside its area; the statement is then
//! rewritten to a `scratch://` or `export://` URL. Those schemes are served
//! by stores rooted at the area (a store that cannot name anything outside
//! its root, and that checks the resolved path of every file it touches),
//! so even a location the check got wrong could not reach the mesh.
//!
//! An area must not overlap the mesh directory, a table's data, the spill
//! directory or a file holding secrets; one that does is reported and left
//! off (fail closed).

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use futures::StreamExt;
use futures::stream::BoxStream;
use meshq_catalog::platform::FilesConfig;
use meshq_connectors::StoreRegistry;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

use crate::policy::PolicyError;

/// URL scheme of the scratch location.
pub const SCRATCH_SCHEME: &str = "scratch";
/// URL scheme of the export location.
pub const EXPORT_SCHEME: &str = "export";

/// The scratch and export locations, as resolved at load.
#[derive(Debug, Clone, Default)]
pub struct FileAccess {
    scratch: Option<Arc<Area>>,
    export: Option<Arc<Area>>,
}

/// One location SQL may use.
#[derive(Debug)]
struct Area {
    /// `files.scratch` or `files.export`.
    key: &'static str,
    scheme: &'static str,
    root: Root,
    store: Arc<dyn ObjectStore>,
}

#[derive(Debug)]
enum Root {
    /// A local folder, canonical.
    Local(PathBuf),
    /// An object store prefix: the URL, ending in `/`.
    Url(Url),
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Root::Local(p) => write!(f, "{}", p.display()),
            Root::Url(u) => write!(f, "{u}"),
        }
    }
}

impl FileAccess {
    /// Resolves `files:`. `forbidden` are canonical local paths no area may
    /// overlap (mesh root, table data, spill directory, secret files). An
    /// area that cannot be used is left off and its problem returned.
    pub fn resolve(
        config: &FilesConfig,
        mesh_root: &Path,
        forbidden: &[PathBuf],
        stores: &StoreRegistry,
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let mut area = |key: &'static str, scheme: &'static str, value: &Option<String>| {
            let value = value.as_deref()?;
            match Area::resolve(key, scheme, value, mesh_root, forbidden, stores) {
                Ok(a) => Some(Arc::new(a)),
                Err(e) => {
                    problems.push(format!(
                        "{key} `{value}` cannot be used: {e}; statements that need it are refused"
                    ));
                    None
                }
            }
        };
        let scratch = area("files.scratch", SCRATCH_SCHEME, &config.scratch);
        let export = area("files.export", EXPORT_SCHEME, &config.export);
        (Self { scratch, export }, problems)
    }

    /// Serves `scratch://` and `export://` in `runtime`.
    pub fn register(&self, runtime: &RuntimeEnv) {
        for area in [&self.scratch, &self.export].into_iter().flatten() {
            if let Ok(url) = Url::parse(&format!("{}://", area.scheme)) {
                runtime.register_object_store(&url, Arc::clone(&area.store));
            }
        }
    }

    /// Rewrites the locations `plan` reads or writes into the areas, or
    /// refuses the statement.
    pub fn confine(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        plan.transform(|node| match node {
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(mut t)) => {
                let mut locations = Vec::with_capacity(t.locations.len());
                for l in &t.locations {
                    locations.push(self.place(
                        &self.scratch,
                        "CREATE EXTERNAL TABLE",
                        "scratch",
                        l,
                    )?);
                }
                t.locations = locations;
                Ok(Transformed::yes(LogicalPlan::Ddl(
                    DdlStatement::CreateExternalTable(t),
                )))
            }
            LogicalPlan::Copy(mut c) => {
                c.output_url = self.place(&self.export, "COPY", "export", &c.output_url)?;
                Ok(Transformed::yes(LogicalPlan::Copy(c)))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }

    fn place(
        &self,
        area: &Option<Arc<Area>>,
        what: &str,
        short: &str,
        location: &str,
    ) -> Result<String, PolicyError> {
        let refuse = |reason: String| PolicyError::Location {
            what: what.to_string(),
            location: location.to_string(),
            reason,
        };
        let Some(area) = area else {
            return Err(refuse(format!(
                "no {short} location is configured; set `files: {{ {short}: DIR }}` in meshq.yaml to a folder outside the mesh directory"
            )));
        };
        let relative = area.relative(location).map_err(|why| {
            refuse(format!(
                "{why}; {what} may only use the {short} location `{}` ({}): name a path inside it, or relative to it",
                area.root, area.key
            ))
        })?;
        let mut url = Url::parse(&format!("{}:///", area.scheme))
            .map_err(|e| refuse(format!("internal: {e}")))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| refuse("internal: the area URL has no path".into()))?;
            segments.clear();
            segments.extend(relative.iter().map(String::as_str));
        }
        Ok(url.to_string())
    }
}

/// Why an area of `files:` cannot be used.
#[derive(Debug, thiserror::Error)]
enum AreaError {
    #[error("{0}")]
    Url(#[from] url::ParseError),
    #[error(transparent)]
    Store(#[from] meshq_connectors::Error),
    #[error("not an object store URL")]
    NotAStore,
    #[error("not a file URL")]
    NotAFileUrl,
    #[error("{0}")]
    Path(#[from] object_store::path::Error),
    #[error("cannot create it: {0}")]
    Create(std::io::Error),
    #[error("{0}")]
    Resolve(std::io::Error),
    #[error("it overlaps `{}`, which SQL must never read or write directly", .0.display())]
    Overlaps(PathBuf),
    #[error("{0}")]
    Local(#[from] object_store::Error),
}

/// Why a location a statement names is not inside its area.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum PlaceError {
    #[error("globs are not supported here; name a file or a folder")]
    Glob,
    #[error("`..` is not allowed")]
    ParentDir,
    #[error("it cannot be resolved")]
    Unresolvable,
    #[error("it is outside the location")]
    Outside,
    #[error("it is not a local path")]
    NotLocal,
    #[error("not a file URL")]
    NotAFileUrl,
    #[error("it is not a plain path")]
    NotPlain,
    #[error("{0}")]
    Url(#[from] url::ParseError),
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// The path segments of a relative path, refusing `..`.
fn segments(text: &str) -> Result<Vec<String>, PlaceError> {
    let mut out = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PlaceError::ParentDir),
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

impl Area {
    fn resolve(
        key: &'static str,
        scheme: &'static str,
        value: &str,
        mesh_root: &Path,
        forbidden: &[PathBuf],
        stores: &StoreRegistry,
    ) -> Result<Self, AreaError> {
        if value.contains("://") && !value.starts_with("file://") {
            let mut url = Url::parse(value)?;
            if !url.path().ends_with('/') {
                url.set_path(&format!("{}/", url.path()));
            }
            let store = stores.store_for(&url)?.ok_or(AreaError::NotAStore)?;
            let prefix = StorePath::from_url_path(url.path())?;
            let store: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(store, prefix));
            return Ok(Self {
                key,
                scheme,
                root: Root::Url(url),
                store,
            });
        }
        let path = match value.strip_prefix("file://") {
            Some(_) => Url::parse(value)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or(AreaError::NotAFileUrl)?,
            None => mesh_root.join(value),
        };
        std::fs::create_dir_all(&path).map_err(AreaError::Create)?;
        let root = std::fs::canonicalize(&path).map_err(AreaError::Resolve)?;
        if let Some(f) = forbidden
            .iter()
            .find(|f| f.starts_with(&root) || root.starts_with(f))
        {
            return Err(AreaError::Overlaps(f.clone()));
        }
        let store = ConfinedLocalStore::new(root.clone(), forbidden.to_vec())?;
        Ok(Self {
            key,
            scheme,
            root: Root::Local(root),
            store: Arc::new(store),
        })
    }

    /// The segments of `location` inside this area.
    fn relative(&self, location: &str) -> Result<Vec<String>, PlaceError> {
        if has_glob(location) {
            return Err(PlaceError::Glob);
        }
        let trailing = location.ends_with('/');
        let mut out = if let Some(rest) = location.strip_prefix(&format!("{}://", self.scheme)) {
            segments(rest)?
        } else {
            match &self.root {
                Root::Url(root) => {
                    if !location.contains("://") {
                        segments(location)?
                    } else {
                        let url = Url::parse(location)?;
                        let same_store = url.scheme() == root.scheme()
                            && url.host_str() == root.host_str()
                            && url.username() == root.username();
                        let inside = same_store.then(|| {
                            let want = StorePath::from_url_path(url.path()).ok()?;
                            let base = StorePath::from_url_path(root.path()).ok()?;
                            want.prefix_match(&base)
                                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                        });
                        match inside.flatten() {
                            Some(parts) => parts,
                            None => return Err(PlaceError::Outside),
                        }
                    }
                }
                Root::Local(root) => relative_local(root, location)?,
            }
        };
        if trailing {
            // A folder: DataFusion lists it, or writes files into it.
            out.push(String::new());
        }
        Ok(out)
    }
}

/// The segments of a local `location` (a path, relative to `root` or
/// absolute, or a `file://` URL) inside `root`.
fn relative_local(root: &Path, location: &str) -> Result<Vec<String>, PlaceError> {
    let path = if location.starts_with("file://") {
        Url::parse(location)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or(PlaceError::NotAFileUrl)?
    } else if location.contains("://") {
        return Err(PlaceError::NotLocal);
    } else {
        root.join(location)
    };
    let resolved = resolve_existing(&path)?;
    let rel = resolved
        .strip_prefix(root)
        .map_err(|_| PlaceError::Outside)?;
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => return Err(PlaceError::NotPlain),
        }
    }
    Ok(out)
}

/// `path` with its longest existing prefix canonicalised (symlinks,
/// `/proc/self/…`, `.`/`..` resolved) and the rest appended; `..` in the
/// part that does not exist yet is refused.
fn resolve_existing(path: &Path) -> Result<PathBuf, PlaceError> {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(c) => {
                let mut out = c;
                for r in rest.iter().rev() {
                    if r == ".." {
                        return Err(PlaceError::ParentDir);
                    }
                    if r != "." {
                        out.push(r);
                    }
                }
                return Ok(out);
            }
            Err(_) => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(PlaceError::Unresolvable);
                };
                if existing.ends_with("..") {
                    return Err(PlaceError::ParentDir);
                }
                rest.push(name);
                if !existing.pop() {
                    return Err(PlaceError::Unresolvable);
                }
            }
        }
    }
}

/// A path a confined store refused: it leaves the area.
#[derive(Debug, thiserror::Error)]
#[error("`{path}` is refused: {why}")]
pub struct Confined {
    /// The path asked for, within the area.
    pub path: String,
    /// Why.
    pub why: String,
}

/// The rule a confined store applies to every path: resolved, it stays
/// under the root and out of the forbidden paths.
#[derive(Debug)]
struct Confinement {
    root: PathBuf,
    forbidden: Vec<PathBuf>,
}

impl Confinement {
    fn allows(&self, resolved: &Path) -> bool {
        resolved.starts_with(&self.root) && !self.forbidden.iter().any(|f| resolved.starts_with(f))
    }

    fn check(&self, location: &StorePath) -> object_store::Result<()> {
        let denied = |why: String| object_store::Error::Generic {
            store: "meshq confined store",
            source: Box::new(Confined {
                path: location.to_string(),
                why,
            }),
        };
        let resolved = resolve_existing(&self.root.join(location.as_ref()))
            .map_err(|e| denied(e.to_string()))?;
        if self.allows(&resolved) {
            Ok(())
        } else {
            Err(denied("it resolves outside the location".into()))
        }
    }
}

/// A local folder as an object store that touches nothing outside it: every
/// path is resolved (symlinks followed) before use and must stay under the
/// root and out of the forbidden paths.
#[derive(Debug)]
pub struct ConfinedLocalStore {
    rule: Arc<Confinement>,
    inner: LocalFileSystem,
}

impl fmt::Display for ConfinedLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfinedLocalStore({})", self.rule.root.display())
    }
}

impl ConfinedLocalStore {
    /// The store of `root` (canonical); `forbidden` paths stay out of reach
    /// even through symlinks.
    pub fn new(root: PathBuf, forbidden: Vec<PathBuf>) -> object_store::Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(&root)?;
        Ok(Self {
            rule: Arc::new(Confinement { root, forbidden }),
            inner,
        })
    }

    fn check(&self, location: &StorePath) -> object_store::Result<()> {
        self.rule.check(location)
    }
}

#[async_trait]
impl ObjectStore for ConfinedLocalStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &StorePath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        let rule = Arc::clone(&self.rule);
        let checked = locations
            .map(move |l| {
                let l = l?;
                rule.check(&l)?;
                Ok(l)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Some(p) = prefix
            && let Err(e) = self.check(p)
        {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let rule = Arc::clone(&self.rule);
        self.inner
            .list(prefix)
            .filter(move |m| {
                // Entries reached through a symlink that leads out are dropped.
                let keep = match m {
                    Ok(meta) => rule.check(&meta.location).is_ok(),
                    Err(_) => true,
                };
                std::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        if let Some(p) = prefix {
            self.check(p)?;
        }
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result.objects.retain(|m| self.check(&m.location).is_ok());
        result.common_prefixes.retain(|p| self.check(p).is_ok());
        Ok(result)
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(dir: &Path, forbidden: &[PathBuf]) -> FileAccess {
        let config = FilesConfig {
            scratch: Some("scratch".into()),
            export: Some("exports".into()),
        };
        let (access, problems) =
            FileAccess::resolve(&config, dir, forbidden, &StoreRegistry::default());
        assert!(problems.is_empty(), "{problems:?}");
        access
    }

    fn place(a: &FileAccess, location: &str) -> Result<String, PolicyError> {
        a.place(&a.scratch, "CREATE EXTERNAL TABLE", "scratch", location)
    }

    #[test]
    fn locations_resolve_inside_the_area_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let mesh = base.join("mesh");
        std::fs::create_dir_all(mesh.join("payments/data")).unwrap();
        let a = access(&base, std::slice::from_ref(&mesh));
        let scratch = base.join("scratch");
        std::fs::create_dir_all(scratch.join("sub")).unwrap();
        assert_eq!(place(&a, "x.csv").unwrap(), "scratch:///x.csv");
        assert_eq!(
            place(&a, &format!("{}/sub/x.csv", scratch.display())).unwrap(),
            "scratch:///sub/x.csv"
        );
        assert_eq!(place(&a, "sub/").unwrap(), "scratch:///sub/");
        assert_eq!(
            place(&a, &format!("file://{}/sub/a%20b.csv", scratch.display())).unwrap(),
            "scratch:///sub/a%20b.csv"
        );
        assert_eq!(
            place(&a, "scratch:///sub/y.csv").unwrap(),
            "scratch:///sub/y.csv"
        );
        // Everything that names the mesh or a system file is refused.
        for bad in [
            format!("{}/payments/data/", mesh.display()),
            format!("{}/payments/data/t*", mesh.display()),
            format!("{}/../mesh/payments/", scratch.display()),
            format!("/proc/self/root{}/payments/data/", mesh.display()),
            format!("file://{}/p%61yments/data/", mesh.display()),
            "/etc/hostname".to_string(),
            "../mesh/payments/".to_string(),
            "scratch:///../mesh/".to_string(),
            "s3://bucket/x".to_string(),
            "sub/*.csv".to_string(),
        ] {
            let e = place(&a, &bad).unwrap_err().to_string();
            assert!(
                e.contains("files.scratch") || e.contains("not allowed"),
                "{bad}: {e}"
            );
        }
        // A symlink inside the area that leads into the mesh.
        std::os::unix::fs::symlink(&mesh, scratch.join("link")).unwrap();
        assert!(place(&a, "link/payments/").is_err());
    }

    #[test]
    fn an_area_overlapping_the_mesh_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let config = FilesConfig {
            scratch: Some(".".into()),
            export: Some("out".into()),
        };
        let (a, problems) = FileAccess::resolve(
            &config,
            &base,
            std::slice::from_ref(&base),
            &StoreRegistry::default(),
        );
        assert!(a.scratch.is_none() && a.export.is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("overlaps"), "{problems:?}");
        let none = FileAccess::default();
        let e = none
            .place(&none.export, "COPY", "export", "/tmp/x.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no export location is configured"), "{e}");
    }

    #[tokio::test]
    async fn the_store_does_not_follow_links_out() {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let secret = base.join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("key.pem"), "KEY").unwrap();
        let root = base.join("area");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("ok.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(&secret, root.join("link")).unwrap();
        let store = ConfinedLocalStore::new(root, vec![secret]).unwrap();
        assert!(store.get(&StorePath::from("ok.csv")).await.is_ok());
        let e = store
            .get(&StorePath::from("link/key.pem"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, object_store::Error::Generic { source, .. } if source.is::<Confined>()),
            "{e}"
        );
        let listed: Vec<_> = store.list(None).collect().await;
        let names: Vec<String> = listed
            .into_iter()
            .filter_map(|m| m.ok())
            .map(|m| m.location.to_string())
            .collect();
        assert_eq!(names, vec!["ok.csv".to_string()]);
    }
}
