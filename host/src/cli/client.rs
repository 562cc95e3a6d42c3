//! The one HTTP client of the command line: every subcommand that talks to a running host
//! (`deploy`, `sagas`, `components`, `dead-letters`) goes through `Client`, which sends the
//! admin token and turns the host's answers into values or into the host's own error words.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A running host's operator API, reached over HTTP.
pub struct Client {
    base: String,
    token: Option<String>,
    http: Hyper<HttpConnector, Full<Bytes>>,
}

/// Why a request to the host did not give an answer to use.
#[derive(Debug)]
pub enum ClientError {
    /// The host could not be reached (or broke off its answer).
    Unreachable(String),
    /// The host answered with an error: its status and its own words.
    Refused { status: u16, message: String },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(problem) => f.write_str(problem),
            ClientError::Refused { status, message } => {
                write!(f, "the host answered {status}: {message}")
            }
        }
    }
}

impl Client {
    /// A client of the host at `base` (http://HOST:PORT), with the admin token if given.
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            http: Hyper::builder(TokioExecutor::new()).build_http(),
        }
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
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(format!(
                "cannot reach {url} ({e}); is the host running there? (--host or SAGA_HOST_URL)"
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
