//! A throwaway certificate authority and a server certificate for 127.0.0.1 it signed, made
//! with the openssl command line (the tests' TLS Postgres; no crate of ours mints certificates).

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Writes `server.crt` and `server.key` (for 127.0.0.1 and localhost) and the CA that signed
/// them into `root`; returns the CA certificate's path, for a client's `sslrootcert`.
pub fn make_server_certificate(root: &Path) -> Result<PathBuf> {
    let (cert, key) = (root.join("server.crt"), root.join("server.key"));
    let (ca, ca_key, csr, ext) =
        (root.join("ca.crt"), root.join("ca.key"), root.join("server.csr"), root.join("server.ext"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")?;
    let os = OsStr::new;
    openssl(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("2"),
        os("-subj"),
        os("/CN=chatedge test CA"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ])?;
    openssl(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
    ])?;
    openssl(&[
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("2"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ])?;
    Ok(ca)
}

fn openssl(args: &[&OsStr]) -> Result<()> {
    let status = std::process::Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?;
    if !status.success() {
        bail!("openssl could not make a certificate");
    }
    Ok(())
}
