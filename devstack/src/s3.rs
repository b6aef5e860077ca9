//! The embedded S3 server of the dev stack and the tests: the `s3s` protocol implementation over
//! `s3s-fs` (objects as files under a directory), SigV4 signatures verified (headers and
//! presigned URLs) with one access key pair, served under `netserve`'s slow-client limits.

use anyhow::{Context, Result};
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
    let addr: SocketAddr = listen.parse().with_context(|| format!("S3 listen address {listen}"))?;
    let listener = netserve::bind(addr).with_context(|| format!("binding {listen}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let limits = netserve::Limits::from_env("CHATEDGE_S3");
    let builder = std::sync::Arc::new(limits.builder());
    let task = tokio::spawn(netserve::serve(
        listener,
        limits,
        move |accepted: netserve::Accepted| {
            let (builder, service) = (builder.clone(), service.clone());
            async move {
                let _ = builder.serve_connection(accepted.io, service).await;
                drop(accepted.permit);
            }
        },
        std::future::pending(),
    ));
    Ok(S3Dev { endpoint: format!("http://{addr}"), addr, task })
}
