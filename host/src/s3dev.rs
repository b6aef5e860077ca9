//! The embedded S3 server of the dev stack and the tests: the `s3s` protocol implementation over
//! `s3s-fs` (objects as files under a directory), SigV4 signatures verified (headers and
//! presigned URLs) with one access key pair.

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::path::Path;

/// A running embedded S3 server.
pub struct S3Dev {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Its listening address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Dev {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server on `listen` storing under `root`, with `bucket` created, accepting requests
/// signed by (`access_key`, `secret_key`).
pub async fn start(root: &Path, bucket: &str, listen: &str, access_key: &str, secret_key: &str) -> Result<S3Dev> {
    std::fs::create_dir_all(root.join(bucket)).with_context(|| format!("creating {}", root.display()))?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3 root {}: {e:?}", root.display()))?;
    let service = {
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(access_key, secret_key));
        b.build()
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let _ = socket.set_nodelay(true);
            let conn = builder.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(S3Dev { endpoint: format!("http://{addr}"), addr, task })
}
