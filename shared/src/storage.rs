//! S3-protocol object storage by configuration alone (Supabase Storage's S3 endpoint, AWS S3, R2,
//! MinIO, the bundled dev server): SigV4 presigned URLs from `rusty-s3`, so a request is one
//! plain HTTP call with no SDK. Shared because uploads write the bucket and code execution reads
//! inputs from it and writes charts to it, with the same variables.

use crate::ApiError;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::time::Duration;

/// Bucket when `storage_bucket` is unset.
pub const DEFAULT_BUCKET: &str = "uploads";
/// SigV4 region when `storage_region` is unset.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The variables [`StorageSettings::from_variables`] reads.
pub const VARIABLES: &[&str] = &[
    "storage_endpoint",
    "storage_public_endpoint",
    "storage_bucket",
    "storage_region",
    "storage_access_key_id",
    "storage_secret_access_key",
    "storage_path_style",
];

/// Whether `key` has the shape of an upload's object key for this user and file:
/// `<user id>/<file id>/<safe name>`, the name one component of ASCII letters, digits, `.`, `-`
/// and `_` (at most 100, no leading dot). Keys are read back from rows users can reach by other
/// paths (PostgREST), and the S3 signer resolves `..`, so a key merely starting with the right
/// prefix (`me/../victim/x`) would reach another user's object.
pub fn is_upload_key(key: &str, user_id: &str, file_id: &str) -> bool {
    let mut parts = key.split('/');
    let (Some(owner), Some(id), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    owner == user_id
        && crate::is_uuid(owner)
        && id == file_id
        && crate::is_uuid(id)
        && (1..=100).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The storage variables as set, read in this one place with the defaults here.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSettings {
    /// `storage_endpoint` (required to store anything).
    pub endpoint: Option<String>,
    /// `storage_public_endpoint`: what download links use, when set.
    pub public_endpoint: Option<String>,
    /// `storage_bucket`.
    pub bucket: String,
    /// `storage_region`.
    pub region: String,
    /// `storage_access_key_id` (required).
    pub access_key_id: Option<String>,
    /// `storage_secret_access_key` (required).
    pub secret_access_key: Option<String>,
    /// `storage_path_style`: anything but `false` is path-style.
    pub path_style: bool,
}

impl StorageSettings {
    /// Reads the storage variables; `var` answers `None` for unset ones, blank counts as unset.
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        StorageSettings {
            endpoint: var("storage_endpoint"),
            public_endpoint: var("storage_public_endpoint"),
            bucket: var("storage_bucket").unwrap_or_else(|| DEFAULT_BUCKET.to_owned()),
            region: var("storage_region").unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            access_key_id: var("storage_access_key_id"),
            secret_access_key: var("storage_secret_access_key"),
            path_style: var("storage_path_style").is_none_or(|v| v.trim() != "false"),
        }
    }

    /// The storage to use: a 500 naming the first required variable that is not set.
    pub fn config(&self) -> Result<StorageConfig, ApiError> {
        let required = |value: &Option<String>, name: &str| {
            value.clone().ok_or_else(|| {
                ApiError::internal(format!("server misconfigured: variable '{name}' is not set"))
                    .with_detail("variable", name)
            })
        };
        StorageConfig::new(
            &required(&self.endpoint, "storage_endpoint")?,
            self.public_endpoint.as_deref(),
            &self.bucket,
            &self.region,
            &required(&self.access_key_id, "storage_access_key_id")?,
            &required(&self.secret_access_key, "storage_secret_access_key")?,
            self.path_style,
        )
    }
}

/// Where objects go.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    bucket: Bucket,
    /// The same bucket as clients reach it (download links), when that differs.
    public_bucket: Bucket,
    credentials: Credentials,
}

fn bucket(endpoint: &str, name: &str, region: &str, path_style: bool) -> Result<Bucket, ApiError> {
    let url = endpoint
        .parse()
        .map_err(|e| ApiError::internal(format!("server misconfigured: storage endpoint '{endpoint}': {e}")))?;
    let style = if path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
    Bucket::new(url, style, name.to_owned(), region.to_owned())
        .map_err(|e| ApiError::internal(format!("server misconfigured: storage bucket: {e}")))
}

impl StorageConfig {
    /// A bucket at `endpoint` (path-style addressing unless `path_style` is false), signed with
    /// the access key pair; `public_endpoint` is what download links use (defaults to `endpoint`).
    pub fn new(
        endpoint: &str,
        public_endpoint: Option<&str>,
        bucket_name: &str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
        path_style: bool,
    ) -> Result<Self, ApiError> {
        Ok(StorageConfig {
            bucket: bucket(endpoint, bucket_name, region, path_style)?,
            public_bucket: bucket(public_endpoint.unwrap_or(endpoint), bucket_name, region, path_style)?,
            credentials: Credentials::new(access_key_id.to_owned(), secret_access_key.to_owned()),
        })
    }

    /// A presigned PUT of `key`.
    pub fn put_url(&self, key: &str, expires: Duration) -> String {
        self.bucket.put_object(Some(&self.credentials), key).sign(expires).to_string()
    }

    /// A presigned DELETE of `key`.
    pub fn delete_url(&self, key: &str, expires: Duration) -> String {
        self.bucket.delete_object(Some(&self.credentials), key).sign(expires).to_string()
    }

    /// A presigned GET of `key` on the public endpoint, for clients; `file_name` sets the
    /// download name (`response-content-disposition`).
    pub fn download_url(&self, key: &str, file_name: &str, expires: Duration) -> String {
        let mut action = self.public_bucket.get_object(Some(&self.credentials), key);
        let ascii: String =
            file_name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' }).collect();
        action.query_mut().insert("response-content-disposition", format!("attachment; filename=\"{ascii}\""));
        action.sign(expires).to_string()
    }

    /// A presigned GET of `key` on the internal endpoint.
    pub fn get_url(&self, key: &str, expires: Duration) -> String {
        self.bucket.get_object(Some(&self.credentials), key).sign(expires).to_string()
    }

    /// The origin (`scheme://host[:port]`) of the internal endpoint, for allow-lists.
    pub fn origin(&self) -> String {
        self.bucket.base_url().origin().ascii_serialization()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_carry_sigv4_and_the_key() {
        let c = StorageConfig::new(
            "http://127.0.0.1:9000",
            Some("https://files.example.com"),
            "uploads",
            "us-east-1",
            "AKID",
            "secret",
            true,
        )
        .unwrap();
        let put = c.put_url("u/1/a b.png", Duration::from_secs(60));
        assert!(put.starts_with("http://127.0.0.1:9000/uploads/u/1/a%20b.png?"), "{put}");
        for part in
            ["X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Credential=AKID", "X-Amz-Signature=", "X-Amz-Expires=60"]
        {
            assert!(put.contains(part), "{part} missing in {put}");
        }
        let get = c.download_url("u/1/a.png", "my \"photo\".png", Duration::from_secs(300));
        assert!(get.starts_with("https://files.example.com/uploads/u/1/a.png?"), "{get}");
        assert!(get.contains("response-content-disposition=attachment"), "{get}");
        assert_ne!(c.delete_url("k", Duration::from_secs(60)), c.put_url("k", Duration::from_secs(60)));
        assert_eq!(c.origin(), "http://127.0.0.1:9000");
        assert!(StorageConfig::new("not a url", None, "b", "r", "k", "s", true).is_err());
    }

    #[test]
    fn settings_default_here_and_need_their_keys() {
        let read = crate::variables::names_read(|var| {
            StorageSettings::from_variables(var);
        });
        assert_eq!(read, VARIABLES.iter().map(|s| (*s).to_owned()).collect());
        let s = StorageSettings::from_variables(|name| (name == "storage_path_style").then(|| "false".into()));
        assert_eq!((s.bucket.as_str(), s.region.as_str(), s.path_style), (DEFAULT_BUCKET, DEFAULT_REGION, false));
        let e = s.config().unwrap_err();
        assert_eq!((e.status, format!("{e:?}").contains("storage_endpoint")), (500, true));
        let ok = StorageSettings::from_variables(|name| match name {
            "storage_endpoint" => Some("http://127.0.0.1:9000".into()),
            "storage_access_key_id" | "storage_secret_access_key" => Some("k".into()),
            _ => None,
        });
        assert!(ok.config().is_ok());
    }
}
