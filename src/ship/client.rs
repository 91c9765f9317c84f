//! The HTTP(S) client to the central store: reqwest on rustls (ring), with a private CA,
//! an optional client certificate (mTLS) and an optional server name that differs from the
//! URL's host. No OpenSSL.

use crate::config::{SinkConfig, SinkTls};
use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;

/// What the store publishes at `GET /v1/limits`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_decompressed_bytes: u64,
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

pub fn tls_config(tls: Option<&SinkTls>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca.as_deref()) {
        Some(ca) => {
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("adding a CA certificate from {}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match tls.and_then(|t| Some((t.cert.as_deref()?, t.key.as_deref()?))) {
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
                .with_context(|| format!("parsing the private key in {}", key.display()))?
                .with_context(|| format!("{} holds no PEM private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .context("client certificate and key do not match")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Builds the client and the URL to POST to. With `tls.server_name`, the URL's host is
/// replaced by that name and the name is pinned to the URL's original address, so the
/// certificate is checked against the configured name.
pub fn build(sink: &SinkConfig) -> anyhow::Result<(reqwest::Client, reqwest::Url)> {
    let mut url = reqwest::Url::parse(&sink.url).context("sink.url")?;
    let mut builder = reqwest::Client::builder()
        .timeout(sink.request_timeout)
        .connect_timeout(sink.request_timeout.min(std::time::Duration::from_secs(10)))
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("logveil/", env!("CARGO_PKG_VERSION")));
    if url.scheme() == "https" {
        builder = builder.use_preconfigured_tls(tls_config(sink.tls.as_ref())?);
        if let Some(name) = sink.tls.as_ref().and_then(|t| t.server_name.clone()) {
            let addrs: Vec<std::net::SocketAddr> =
                url.socket_addrs(|| None).context("resolving sink.url")?;
            url.set_host(Some(&name))
                .context("sink.tls.server_name is not a valid host name")?;
            builder = builder.resolve_to_addrs(&name, &addrs);
        }
    }
    Ok((builder.build().context("building the HTTP client")?, url))
}

/// `GET /v1/limits` next to the batches URL.
pub async fn fetch_limits(
    client: &reqwest::Client,
    batches_url: &reqwest::Url,
) -> anyhow::Result<Limits> {
    let url = batches_url.join("limits").context("limits URL")?;
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(describe(&e)))?;
    if !resp.status().is_success() {
        bail!("{url} answered HTTP {}", resp.status().as_u16());
    }
    let body = resp.bytes().await?;
    serde_json::from_slice(&body).with_context(|| format!("{url} did not answer with limits JSON"))
}

/// A short description of a transport error (never includes request bodies).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_request() {
        "request"
    } else {
        "transport"
    };
    let mut msg = format!("{kind} error");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
