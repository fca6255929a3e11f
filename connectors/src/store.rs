//! Object stores from `meshq.yaml` `stores`, matched to table locations by
//! bucket (S3, GCS) or container (Azure).
//!
//! A location with no matching store entry falls back to the provider's
//! standard environment configuration (e.g. `AWS_*` variables), as the
//! ecosystem's own tools do.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshq_catalog::platform::{PlatformConfig, SecretRef, StoreConfig};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{Error, Result};

/// Builds object stores for table locations.
#[derive(Debug, Clone, Default)]
pub struct StoreRegistry {
    stores: BTreeMap<String, StoreConfig>,
}

fn secret(store: &str, name: &str, s: &Option<SecretRef>) -> Result<Option<String>> {
    match s {
        None => Ok(None),
        Some(r) => r
            .resolve()
            .map(Some)
            .map_err(|e| Error::config(store, format!("store credential `{name}`: {e}"))),
    }
}

/// The bucket or container a location URL addresses.
fn bucket_of(url: &Url) -> Option<&str> {
    if !url.username().is_empty() {
        // abfss://container@account.dfs.core.windows.net/path
        return Some(url.username());
    }
    url.host_str()
}

impl StoreRegistry {
    /// Reads the `stores` section.
    pub fn new(config: &PlatformConfig) -> Self {
        Self {
            stores: config.stores.clone(),
        }
    }

    fn find(&self, scheme_kind: &str, bucket: &str) -> Option<(&str, &StoreConfig)> {
        self.stores
            .iter()
            .filter(|(_, cfg)| {
                matches!(
                    (scheme_kind, cfg),
                    ("s3", StoreConfig::S3 { .. })
                        | ("gcs", StoreConfig::Gcs { .. })
                        | ("azure", StoreConfig::Azure { .. })
                )
            })
            .find(|(name, cfg)| {
                let explicit = match cfg {
                    StoreConfig::S3 { bucket, .. } | StoreConfig::Gcs { bucket, .. } => {
                        bucket.as_deref()
                    }
                    StoreConfig::Azure { container, .. } => container.as_deref(),
                    StoreConfig::Postgresql { .. } | StoreConfig::Flightsql { .. } => return false,
                };
                explicit.unwrap_or(name.as_str()) == bucket
            })
            .map(|(n, c)| (n.as_str(), c))
    }

    /// The store serving `url`, or `None` for local files. The error names
    /// the store and what is missing, never a credential value.
    pub fn store_for(&self, url: &Url) -> Result<Option<Arc<dyn ObjectStore>>> {
        let kind = match url.scheme() {
            "file" => return Ok(None),
            "s3" | "s3a" => "s3",
            "gs" | "gcs" => "gcs",
            "az" | "abfs" | "abfss" | "azure" | "adl" => "azure",
            other => {
                return Err(Error::unsupported(
                    url.as_str(),
                    format!("URL scheme `{other}` is not supported"),
                ));
            }
        };
        let bucket = bucket_of(url).ok_or_else(|| {
            Error::invalid(url.as_str(), format!("location `{url}` names no bucket"))
        })?;
        let found = self.find(kind, bucket);
        let store: Arc<dyn ObjectStore> = match (kind, found) {
            ("s3", Some((name, cfg))) => Arc::new(build_s3(name, cfg, bucket)?),
            ("s3", None) => Arc::new(
                AmazonS3Builder::from_env()
                    .with_retry(retry_config())
                    .with_client_options(client_options())
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| Error::read(format!("S3 bucket `{bucket}`"), url.as_str(), e))?,
            ),
            ("gcs", Some((name, cfg))) => Arc::new(build_gcs(name, cfg, bucket)?),
            ("gcs", None) => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| Error::read(format!("GCS bucket `{bucket}`"), url.as_str(), e))?,
            ),
            ("azure", Some((name, cfg))) => Arc::new(build_azure(name, cfg, url)?),
            _ => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| {
                        Error::read(format!("Azure container `{bucket}`"), url.as_str(), e)
                    })?,
            ),
        };
        Ok(Some(store))
    }
}

/// Retries and timeouts for every store: an unreachable store fails a query
/// within seconds instead of retrying for minutes, and the next query tries
/// again.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new().with_connect_timeout(Duration::from_secs(5))
}

fn build_s3(name: &str, cfg: &StoreConfig, bucket: &str) -> Result<object_store::aws::AmazonS3> {
    let StoreConfig::S3 {
        endpoint,
        region,
        allow_http,
        path_style,
        access_key_id,
        secret_access_key,
        session_token,
        ..
    } = cfg
    else {
        unreachable!("find() matched the store kind")
    };
    let mut b = AmazonS3Builder::new()
        .with_retry(retry_config())
        .with_client_options(client_options())
        .with_bucket_name(bucket)
        .with_allow_http(*allow_http)
        .with_region(region.as_deref().unwrap_or("us-east-1"));
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    let path_style = path_style.unwrap_or(endpoint.is_some());
    b = b.with_virtual_hosted_style_request(!path_style);
    if let Some(k) = secret(name, "access_key_id", access_key_id)? {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = secret(name, "secret_access_key", secret_access_key)? {
        b = b.with_secret_access_key(k);
    }
    if let Some(k) = secret(name, "session_token", session_token)? {
        b = b.with_token(k);
    }
    b.build()
        .map_err(|e| Error::read(format!("store `{name}`"), name, e))
}

fn build_gcs(
    name: &str,
    cfg: &StoreConfig,
    bucket: &str,
) -> Result<object_store::gcp::GoogleCloudStorage> {
    let StoreConfig::Gcs {
        service_account_key,
        service_account_path,
        ..
    } = cfg
    else {
        unreachable!("find() matched the store kind")
    };
    let mut b = GoogleCloudStorageBuilder::new()
        .with_retry(retry_config())
        .with_client_options(client_options())
        .with_bucket_name(bucket);
    if let Some(k) = secret(name, "service_account_key", service_account_key)? {
        b = b.with_service_account_key(k);
    }
    if let Some(p) = service_account_path {
        b = b.with_service_account_path(p);
    }
    b.build()
        .map_err(|e| Error::read(format!("store `{name}`"), name, e))
}

fn build_azure(
    name: &str,
    cfg: &StoreConfig,
    url: &Url,
) -> Result<object_store::azure::MicrosoftAzure> {
    let StoreConfig::Azure {
        account,
        access_key,
        sas_token,
        client_id,
        client_secret,
        tenant_id,
        use_emulator,
        ..
    } = cfg
    else {
        unreachable!("find() matched the store kind")
    };
    let mut b = MicrosoftAzureBuilder::new()
        .with_retry(retry_config())
        .with_client_options(client_options())
        .with_url(url.as_str())
        .with_use_emulator(*use_emulator);
    if let Some(a) = account {
        b = b.with_account(a);
    }
    if let Some(container) = bucket_of(url) {
        b = b.with_container_name(container);
    }
    if let Some(k) = secret(name, "access_key", access_key)? {
        b = b.with_access_key(k);
    }
    if let Some(t) = secret(name, "sas_token", sas_token)? {
        b = b.with_config(object_store::azure::AzureConfigKey::SasKey, t);
    }
    if let Some(c) = secret(name, "client_id", client_id)? {
        b = b.with_client_id(c);
    }
    if let Some(c) = secret(name, "client_secret", client_secret)? {
        b = b.with_client_secret(c);
    }
    if let Some(t) = secret(name, "tenant_id", tenant_id)? {
        b = b.with_tenant_id(t);
    }
    b.build()
        .map_err(|e| Error::read(format!("store `{name}`"), name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(yaml: &str) -> StoreRegistry {
        let cfg: PlatformConfig = serde_yaml_ng::from_str(yaml).unwrap();
        StoreRegistry::new(&cfg)
    }

    #[test]
    fn local_urls_need_no_store() {
        let r = StoreRegistry::default();
        assert!(
            r.store_for(&"file:///tmp/x".parse().unwrap())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn s3_store_matched_by_bucket_and_missing_credential_named() {
        let r = registry(
            "stores: { acme: { type: s3, endpoint: 'http://127.0.0.1:9', allow_http: true, access_key_id: { env: MESHQ_TEST_UNSET_KEY_1 }, secret_access_key: { env: MESHQ_TEST_UNSET_KEY_2 } } }",
        );
        let err = r
            .store_for(&"s3://acme/tables/x/".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "store credential `access_key_id`: environment variable `MESHQ_TEST_UNSET_KEY_1` is not set"
        );
        assert!(r.find("s3", "acme").is_some());
        assert!(r.find("s3", "other").is_none());
        assert!(r.find("gcs", "acme").is_none());
    }

    #[test]
    fn s3_store_builds_with_endpoint() {
        let r = registry(
            "stores: { data: { type: s3, bucket: lake, endpoint: 'http://127.0.0.1:9', region: eu-west-1, allow_http: true } }",
        );
        let store = r
            .store_for(&"s3://lake/x/".parse().unwrap())
            .unwrap()
            .unwrap();
        assert!(store.to_string().contains("lake"), "{store}");
    }

    #[test]
    fn gcs_and_azure_configs_build() {
        let r = registry(
            "stores: { g: { type: gcs, bucket: gb }, a: { type: azure, account: acct, container: cont, use_emulator: true } }",
        );
        assert!(
            r.store_for(&"gs://gb/x/".parse().unwrap())
                .unwrap()
                .is_some()
        );
        assert!(r.find("azure", "cont").is_some());
        assert!(
            r.store_for(&"az://cont/path/".parse().unwrap())
                .unwrap()
                .is_some()
        );
        let err = r.store_for(&"ftp://x/y".parse().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "URL scheme `ftp` is not supported");
    }
}
