//! The one HTTP client of the command line: every subcommand that talks to a running host
//! (`deploy`, `sagas`, `components`, `dead-letters`) goes through `Client`, which reaches
//! `http://` and `https://` hosts, sends the admin token and turns the host's answers into
//! values or into the host's own error words.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// The host of a plain `http://` URL that is not this machine (loopback or `localhost`).
fn in_clear_beyond_loopback(base: &str) -> Option<String> {
    let uri: hyper::Uri = base.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| host.to_string())
}

/// What an https host's certificate is checked against: the CAs of `ca_cert`, or those the
/// system trusts (none found: https hosts are refused, with a word on --ca-cert).
fn tls_config(ca_cert: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let text = std::fs::read(path)
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&text) {
                let cert = cert.map_err(|e| {
                    format!(
                        "the CA certificate {} is not valid PEM: {e}",
                        path.display()
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    format!("the CA certificate {} cannot be used: {e}", path.display())
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "the CA certificate {} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")",
                    path.display()
                ));
            }
        }
        None => {
            // Unreadable system certificates leave https to --ca-cert; plain http works anyway.
            let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A running host's operator API, reached over HTTP or HTTPS.
pub struct Client {
    base: String,
    token: Option<String>,
    http: Hyper<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why a request to the host did not give an answer to use.
#[derive(Debug)]
pub enum ClientError {
    /// The host could not be reached (or broke off its answer).
    Unreachable(String),
    /// The host answered with an error: its status and its own words.
    Refused { status: u16, message: String },
    /// The host did what was asked, but not everywhere it had to (a cluster deploy some host
    /// could not load, or did not answer): what happened where.
    Incomplete(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(problem) | ClientError::Incomplete(problem) => {
                f.write_str(problem)
            }
            ClientError::Refused { status, message } => {
                write!(f, "the host answered {status}: {message}")
            }
        }
    }
}

impl Client {
    /// A client of the host at `base` (http:// or https://HOST:PORT), with the admin token if
    /// given. An https host's certificate must be signed by a CA of `ca_cert` (a PEM file) when
    /// given, else by one the system trusts. Warns on standard error when the token would
    /// cross the network in clear.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<Client, String> {
        let token = token.filter(|t| !t.is_empty());
        if token.is_some()
            && let Some(host) = in_clear_beyond_loopback(base)
        {
            eprintln!(
                "warning: {host} is reached over plain http, so the admin token travels in clear; \
                 reach it through a TLS-terminating proxy or an SSH tunnel"
            );
        }
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(ca_cert)?)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Hyper::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send("GET", path, None).await
    }

    /// POSTs `body` as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let bytes = body.to_string().into_bytes();
        self.send("POST", path, Some(("application/json", bytes)))
            .await
    }

    /// Sends a request; a body comes with its content type.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = hyper::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let bytes = match body {
            Some((content_type, bytes)) => {
                request = request.header("content-type", content_type);
                bytes
            }
            None => Vec::new(),
        };
        let request = request.body(Full::new(Bytes::from(bytes))).map_err(|_| {
            ClientError::Unreachable(format!(
                "{url} is not a valid URL: give --host as http://HOST:PORT"
            ))
        })?;
        let unreachable = |e: &(dyn std::error::Error + 'static)| {
            ClientError::Unreachable(format!(
                "cannot reach {url} ({}); is the host running there? (--host or SAGA_HOST_URL{})",
                error_chain(e),
                if url.starts_with("https:") {
                    "; --ca-cert for a host whose certificate the system does not trust"
                } else {
                    ""
                }
            ))
        };
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}

/// An error and its causes, `: `-separated (hyper's own words are only "client error
/// (Connect)"; the cause says which certificate was refused and why).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut words = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        words.push_str(": ");
        words.push_str(&inner.to_string());
        cause = inner.source();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::in_clear_beyond_loopback;

    #[test]
    fn the_token_in_clear_is_noticed_beyond_loopback_only() {
        assert_eq!(
            in_clear_beyond_loopback("http://10.0.0.7:8080").as_deref(),
            Some("10.0.0.7")
        );
        assert_eq!(
            in_clear_beyond_loopback("http://saga.example.com").as_deref(),
            Some("saga.example.com")
        );
        for quiet in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "https://saga.example.com",
        ] {
            assert_eq!(in_clear_beyond_loopback(quiet), None, "{quiet}");
        }
    }
}
