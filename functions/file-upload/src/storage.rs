//! S3-protocol object storage by configuration alone (Supabase Storage's S3 endpoint, AWS S3, R2,
//! MinIO, the bundled dev server): SigV4 presigned URLs from `rusty-s3`, so a request is one
//! plain HTTP call with no SDK.

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use shared::ApiError;
use std::time::Duration;

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
}
