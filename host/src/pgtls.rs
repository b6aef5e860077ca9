//! TLS to Postgres with libpq's `sslmode` semantics, over rustls, for everything the host
//! connects to itself: the `spin:postgres` pools, `chatedge migrate`, the dev stack and the
//! maintenance task.
//!
//! | `sslmode` | encrypted | certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` | if the server offers it | no | no |
//! | `require` | yes, or no connection | only with `sslrootcert` (then as `verify-ca`) | no |
//! | `verify-ca` | yes | against `sslrootcert` (else the Mozilla roots) | no |
//! | `verify-full` | yes | against `sslrootcert` (else the Mozilla roots) | yes |
//!
//! With no `sslmode` in the URL the mode is `require` for any host but loopback, where it is
//! `prefer`: credentials and chats never cross a network in clear by default. tokio-postgres
//! understands only `disable` / `prefer` / `require`; the other modes and `sslrootcert` are
//! read here and taken out of the string before it parses the rest.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never encrypt.
    Disable,
    /// Encrypt when the server offers it; no verification.
    Prefer,
    /// Always encrypt; no verification (unless a root certificate is given).
    Require,
    /// Always encrypt; the chain must lead to a trusted root.
    VerifyCa,
    /// Always encrypt; trusted chain and matching host name.
    VerifyFull,
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => Mode::Disable,
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => bail!("unknown sslmode '{other}' (disable, prefer, require, verify-ca, verify-full)"),
        })
    }
}

/// A parsed connection string: tokio-postgres' config plus the TLS settings it cannot hold.
#[derive(Debug, Clone)]
pub struct Target {
    /// Everything but the TLS settings.
    pub config: tokio_postgres::Config,
    /// The effective mode (the default applied).
    pub mode: Mode,
    /// `sslrootcert`: PEM file of trusted roots.
    pub root_cert: Option<PathBuf>,
}

/// Splits the TLS parameters (`sslmode`, `sslrootcert`) off a URL (`postgres://...?a=b`) or a
/// key/value string (`host=... sslmode=...`), returning them and the rest.
fn split_tls_params(address: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    if let Some((base, query)) =
        address.split_once('?').filter(|_| address.starts_with("postgres://") || address.starts_with("postgresql://"))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(v);
            match k {
                "sslmode" => mode = Some(value),
                "sslrootcert" => root = Some(value),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, mode, root);
    }
    let mut kept = Vec::new();
    for token in address.split_whitespace() {
        match token.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_owned()),
            Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_owned()),
            _ => kept.push(token),
        }
    }
    (kept.join(" "), mode, root)
}

// Hand-written: three lines for the one query value that may be escaped (a file path).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether every host the config names is this machine (where `prefer` is the default).
fn loopback_only(config: &tokio_postgres::Config) -> bool {
    let hosts_ok = config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    });
    hosts_ok && config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

impl Target {
    /// Parses a connection string and applies the default mode.
    pub fn parse(address: &str) -> Result<Self> {
        let (rest, mode, root) = split_tls_params(address);
        let mut config = tokio_postgres::Config::from_str(&rest).context("invalid postgres address")?;
        let mode = match mode {
            Some(m) => m.parse()?,
            None if loopback_only(&config) => Mode::Prefer,
            None => Mode::Require,
        };
        config.ssl_mode(match mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        });
        Ok(Target { config, mode, root_cert: root.filter(|r| !r.is_empty()).map(PathBuf::from) })
    }

    /// The rustls connector for this target's mode.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = || -> Result<Arc<rustls::RootCertStore>> {
            let mut store = rustls::RootCertStore::empty();
            match &self.root_cert {
                Some(path) => {
                    for cert in CertificateDer::pem_file_iter(path)
                        .with_context(|| format!("reading sslrootcert {}", path.display()))?
                    {
                        store.add(cert.with_context(|| format!("parsing sslrootcert {}", path.display()))?)?;
                    }
                }
                None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            Ok(Arc::new(store))
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, &self.root_cert) {
            (Mode::Disable | Mode::Prefer, _) | (Mode::Require, None) => Arc::new(Unverified(provider.clone())),
            (Mode::Require | Mode::VerifyCa, _) => Arc::new(ChainOnly(webpki(roots()?, &provider)?)),
            (Mode::VerifyFull, _) => webpki(roots()?, &provider)?,
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    /// Connects once (migrations, the dev stack, maintenance), spawning the connection's I/O.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = self.config.connect(self.connector()?).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection: {e}");
            }
        });
        Ok(client)
    }
}

/// Connects to `address` once with its TLS mode.
pub async fn connect(address: &str) -> Result<tokio_postgres::Client> {
    Target::parse(address)?.connect().await
}

fn webpki(
    roots: Arc<rustls::RootCertStore>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>> {
    Ok(rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?)
}

/// `prefer` / `require`: encryption without authentication, as libpq does them. The
/// handshake's signatures are still checked, so the session keys belong to whoever holds the
/// presented certificate.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name on the certificate is not
/// compared with the host (libpq's meaning).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_default_by_host_and_parse_from_both_forms() {
        let t = Target::parse("postgres://u:p@db.example.com:5432/x").unwrap();
        assert_eq!(t.mode, Mode::Require, "remote hosts default to require");
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        let t = Target::parse("postgres://u:p@127.0.0.1:5432/x").unwrap();
        assert_eq!(t.mode, Mode::Prefer);
        let t = Target::parse("postgres://u@db/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a")
            .unwrap();
        assert_eq!((t.mode, t.root_cert.as_deref()), (Mode::VerifyFull, Some(std::path::Path::new("/etc/ca.pem"))));
        assert_eq!(t.config.get_application_name(), Some("a"));
        let t = Target::parse("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!((t.mode, t.config.get_ssl_mode()), (Mode::VerifyCa, SslMode::Require));
        assert_eq!(Target::parse("postgres://u@db/x?sslmode=disable").unwrap().mode, Mode::Disable);
        assert!(Target::parse("postgres://u@db/x?sslmode=sometimes").is_err());
        // A loopback host name with a remote hostaddr is not loopback.
        let t = Target::parse("host=localhost hostaddr=10.0.0.5 user=u").unwrap();
        assert_eq!(t.mode, Mode::Require);
    }
}
