//! The client side of one upstream: its connection pool with the upstream's connect timeout,
//! TLS settings and pool limits.
//!
//! The pool itself is [`super::pool`]; this module turns the upstream's config into it,
//! including the rustls client config (web PKI roots, a CA file, or no verification; ALPN `h2`
//! for `protocol: http2`).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::ClientConfig;

use super::pool::{Pool, PoolSettings};
use crate::config::{Tls, Upstream, UpstreamProtocol};

/// The client type every upstream uses.
pub type UpstreamClient = Pool;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or parsed.
    #[error("upstream {upstream}: cannot load CA file {path}: {reason}")]
    CaFile {
        /// Upstream name.
        upstream: String,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Builds the client for `upstream`.
pub fn build(
    upstream: &Upstream,
    metrics: &crate::metrics::Metrics,
) -> Result<UpstreamClient, ClientError> {
    let settings = PoolSettings {
        connect_timeout: upstream.connect_timeout,
        idle_timeout: upstream.idle_timeout,
        max_idle: upstream.max_idle_connections,
        read_timeout: upstream.read_timeout,
    };
    let tls = match &upstream.tls {
        Some(t) => Some((Arc::new(tls_config(upstream)?), t.sni.clone())),
        None => None,
    };
    let addresses: Vec<String> = upstream
        .endpoints
        .iter()
        .map(|e| e.address.clone())
        .collect();
    Ok(
        Pool::new(&upstream.name, &addresses, settings, tls, metrics)
            .with_protocol(upstream.protocol),
    )
}

fn verified_tls_config(upstream: &Upstream) -> Result<ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let tls = upstream.tls.clone().unwrap_or(Tls {
        sni: None,
        ca_file: None,
        verify: true,
    });
    if !tls.verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let err = |reason: String| ClientError::CaFile {
                upstream: upstream.name.clone(),
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no certificates in file".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The TLS settings of `upstream`, offering ALPN `h2` (and only it) for `protocol: http2`;
/// an HTTP/1.1 upstream offers no ALPN, as before.
fn tls_config(upstream: &Upstream) -> Result<ClientConfig, ClientError> {
    let mut config = verified_tls_config(upstream)?;
    if upstream.protocol == UpstreamProtocol::Http2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(config)
}

/// `tls: { verify: false }`: accepts any certificate. For test environments only; the
/// commented config says so.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
