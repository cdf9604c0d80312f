//! Optional TLS on the listener (`--tls-cert`, `--tls-key`): rustls with the
//! ring provider. See SECURITY.md, "TLS".

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Build the acceptor from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1). Errors name the file and say what
/// is wrong with it, including a key that does not belong to the certificate.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "bad PEM in the TLS certificate {}: {e}",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "the TLS certificate file {} holds no CERTIFICATE block",
            cert_path.display()
        );
    }
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("cannot read the TLS private key {}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "no usable private key in {} (PKCS#8, RSA or EC PEM expected): {e}",
            key_path.display()
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS setup")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        anyhow::anyhow!(
            "the TLS key {} does not fit the certificate {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
