//! What a handler receives and returns.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::saga::host::types;
use crate::{Error, Result};

/// A request for a handler: a REST request or a broker message.
#[derive(Debug, Clone)]
pub struct Request {
    inner: types::Request,
}

impl Request {
    pub(crate) fn new(inner: types::Request) -> Self {
        Request { inner }
    }

    /// The body (REST) or payload (broker) as `T`. A body that does not fit is a business error
    /// (400) that names the field, e.g. "user_uuid: invalid character …".
    pub fn content<T: DeserializeOwned>(&self) -> Result<T> {
        if self.inner.payload == "null" {
            return Err(Error::business(format!(
                "the request has no body; send a JSON {}",
                short_type_name::<T>()
            )));
        }
        let deserializer = &mut serde_json::Deserializer::from_str(&self.inner.payload);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if path == "." {
                Error::business(format!("invalid request body: {inner}"))
            } else {
                Error::business(format!("invalid request body: {path}: {inner}"))
            }
        })
    }

    /// The body or payload as JSON text.
    pub fn raw(&self) -> &str {
        &self.inner.payload
    }

    /// A path parameter, e.g. `uuid` for "/exams/{uuid}".
    pub fn param(&self, name: &str) -> Result<&str> {
        self.inner
            .params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| Error::system(format!("the route has no path parameter {{{name}}}")))
    }

    /// A path parameter parsed as `T` (a 400 when it does not parse).
    pub fn param_as<T: std::str::FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.param(name)?;
        text.parse().map_err(|e| {
            Error::business(format!("path parameter {name} = {text:?} is invalid: {e}"))
        })
    }

    /// The first query-string parameter of that name.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.inner
            .query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A header (HTTP header names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// On whose behalf the request is made.
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// The saga this request is a step of, if any.
    pub fn saga(&self) -> Option<&str> {
        self.header("saga")
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// A handler's successful answer: a status (200 unless set) and a JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub payload: String,
}

impl Response {
    /// 200 with `value` as JSON (Minos's `Response(value)`).
    pub fn new(value: impl Serialize) -> Self {
        Response {
            status: 200,
            payload: serde_json::to_string(&value).unwrap_or_else(|e| {
                serde_json::Value::String(format!("unserialisable response: {e}")).to_string()
            }),
        }
    }

    /// 200 with a null payload.
    pub fn empty() -> Self {
        Response::new(())
    }

    /// Another success status, e.g. 201.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}
