//! HTTPS with rustls (ring provider): a certificate chain and key from PEM files,
//! optionally client certificates checked against a CA (mutual TLS), reloaded on demand
//! (SIGHUP) without dropping connections: each new handshake uses the configuration in
//! force when it starts, open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use crate::listen::{Accept, Accepting, Io};

/// The files of a TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CAs (PEM) client certificates must chain to; `None` = no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// A TLS configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is unreadable or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// File.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// rustls refused the combination (key does not match the certificate, …).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn pem_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Builds the rustls server configuration from `files`.
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_err(&files.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| pem_err(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The HTTPS transport: the current configuration, swappable.
#[derive(Debug)]
pub struct TlsAcceptor {
    files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
}

impl TlsAcceptor {
    /// Loads `files`.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(Self {
            files,
            current: ArcSwap::new(config),
        })
    }

    /// Re-reads the files; on error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(load(&self.files)?);
        Ok(())
    }
}

impl Accept for TlsAcceptor {
    fn accept(&self, tcp: TcpStream) -> Accepting {
        let config = self.current.load_full();
        Box::pin(async move {
            let stream = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    fn scheme(&self) -> &'static str {
        "https"
    }
}
