//! Iceberg file IO over meshq's object stores.
//!
//! The `iceberg` crate reads metadata, manifest lists and manifests through
//! its [`Storage`] trait. [`MeshStorage`] serves those reads from the same
//! object stores DataFusion scans the data files with: the stores registered
//! in the session's runtime, or built from `meshq.yaml` `stores` on first
//! use. One set of credentials and one connection pool per bucket.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::store::StoreRegistry;

/// Iceberg [`Storage`] backed by the session's object stores.
#[derive(Clone)]
pub struct MeshStorage {
    runtime: Arc<RuntimeEnv>,
    stores: StoreRegistry,
}

impl std::fmt::Debug for MeshStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshStorage").finish_non_exhaustive()
    }
}

impl MeshStorage {
    /// Storage resolving locations through `runtime`'s registered stores,
    /// registering stores from `stores` for buckets it has not seen.
    pub fn new(runtime: Arc<RuntimeEnv>, stores: StoreRegistry) -> Self {
        Self { runtime, stores }
    }

    /// The store and object path of an Iceberg location (a URL, or an
    /// absolute local path as some writers record).
    pub(crate) fn resolve(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let url = location_to_url(location)?;
        let root = ObjectStoreUrl::parse(store_root(&url).as_str())
            .map_err(|e| Error::new(ErrorKind::DataInvalid, e.to_string()))?;
        let store = match self.runtime.object_store(&root) {
            Ok(store) => store,
            Err(_) => {
                let store = self
                    .stores
                    .store_for(&url)
                    .map_err(|e| Error::new(ErrorKind::DataInvalid, e.to_string()))?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::DataInvalid,
                            format!("no object store for `{location}`"),
                        )
                    })?;
                self.runtime
                    .register_object_store(&store_root(&url), Arc::clone(&store));
                store
            }
        };
        let path = Path::from_url_path(url.path()).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("location `{location}` is not a valid object path: {e}"),
            )
        })?;
        Ok((store, path))
    }
}

/// `scheme://bucket` of a location URL: the key object stores are
/// registered under.
pub(crate) fn store_root(url: &Url) -> Url {
    let mut root = url.clone();
    root.set_path("");
    root.set_query(None);
    root.set_fragment(None);
    root
}

/// An Iceberg location as a URL: `s3://…`, `file:///…`, or `/abs/path`.
pub(crate) fn location_to_url(location: &str) -> Result<Url> {
    if location.starts_with('/') {
        return Url::from_file_path(location).map_err(|()| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("`{location}` is not an absolute path"),
            )
        });
    }
    let location = location
        .strip_prefix("file:/")
        .filter(|rest| !rest.starts_with('/'))
        .map(|rest| format!("file:///{rest}"))
        .unwrap_or_else(|| location.to_string());
    Url::parse(&location).map_err(|e| {
        Error::new(
            ErrorKind::DataInvalid,
            format!("location `{location}` is not a URL: {e}"),
        )
    })
}

fn io_error(location: &str, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
        _ => ErrorKind::Unexpected,
    };
    let text = match &e {
        object_store::Error::NotFound { .. } => format!("`{location}` does not exist"),
        other => format!("cannot access `{location}`: {other}"),
    };
    Error::new(kind, text).with_source(e)
}

#[async_trait]
#[typetag::serde]
impl Storage for MeshStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        let (store, p) = self.resolve(path)?;
        match store.head(&p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error(path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, p) = self.resolve(path)?;
        let meta = store.head(&p).await.map_err(|e| io_error(path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let (store, p) = self.resolve(path)?;
        let got = store.get(&p).await.map_err(|e| io_error(path, e))?;
        got.bytes().await.map_err(|e| io_error(path, e))
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, p) = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            store,
            path: p,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (store, p) = self.resolve(path)?;
        store
            .put(&p, PutPayload::from(bs))
            .await
            .map(|_| ())
            .map_err(|e| io_error(path, e))
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let (store, p) = self.resolve(path)?;
        Ok(Box::new(ObjectWrite {
            store,
            path: p,
            location: path.to_string(),
            buffer: Vec::new(),
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, p) = self.resolve(path)?;
        match store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, p) = self.resolve(path)?;
        let mut listing = store.list(Some(&p));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| io_error(path, e))?;
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_error(path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

// `Storage` is serialisable so that scan tasks can travel between processes;
// meshq plans and reads in one process, and a store holding live connections
// and credentials must never be written out.
impl serde::Serialize for MeshStorage {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "meshq object-store storage cannot be serialised",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for MeshStorage {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "meshq object-store storage cannot be deserialised",
        ))
    }
}

/// Builds [`MeshStorage`] for catalogs and static tables.
#[derive(Debug, Clone)]
pub struct MeshStorageFactory {
    storage: MeshStorage,
}

impl MeshStorageFactory {
    /// A factory handing out `storage`.
    pub fn new(storage: MeshStorage) -> Self {
        Self { storage }
    }
}

#[typetag::serde]
impl StorageFactory for MeshStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.storage.clone()))
    }
}

impl serde::Serialize for MeshStorageFactory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.storage.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for MeshStorageFactory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        MeshStorage::deserialize(d).map(|storage| Self { storage })
    }
}

struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.path, range)
            .await
            .map_err(|e| io_error(&self.location, e))
    }
}

struct ObjectWrite {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
    buffer: Vec<u8>,
    closed: bool,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        if self.closed {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("`{}` was already closed", self.location),
            ));
        }
        self.buffer.extend_from_slice(&bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let data = std::mem::take(&mut self.buffer);
        self.store
            .put(&self.path, PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| io_error(&self.location, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_urls() {
        assert_eq!(
            location_to_url("/tmp/wh/t/metadata/v1.metadata.json")
                .unwrap()
                .as_str(),
            "file:///tmp/wh/t/metadata/v1.metadata.json"
        );
        assert_eq!(
            location_to_url("file:/tmp/wh/x.avro").unwrap().as_str(),
            "file:///tmp/wh/x.avro"
        );
        assert_eq!(
            location_to_url("s3://bucket/wh/x.avro").unwrap().as_str(),
            "s3://bucket/wh/x.avro"
        );
        assert_eq!(
            store_root(&Url::parse("s3://bucket/wh/x.avro").unwrap()).as_str(),
            "s3://bucket"
        );
    }

    #[tokio::test]
    async fn reads_local_files_through_the_runtime_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        std::fs::write(&file, b"0123456789").unwrap();
        let storage = MeshStorage::new(Arc::new(RuntimeEnv::default()), StoreRegistry::default());
        let loc = file.to_str().unwrap();
        assert!(storage.exists(loc).await.unwrap());
        assert_eq!(storage.metadata(loc).await.unwrap().size, 10);
        let reader = storage.reader(loc).await.unwrap();
        assert_eq!(reader.read(2..5).await.unwrap().as_ref(), b"234");
        let missing = format!("{}/nope.json", dir.path().display());
        assert!(!storage.exists(&missing).await.unwrap());
        let err = storage.read(&missing).await.unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
