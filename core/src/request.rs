//! The checks an HTTP request passes before it reaches a component, and what of it the
//! component gets. A refusal carries the HTTP status and a message that says what was wrong.

/// Largest total size of the headers passed on to a component.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Deepest nesting of arrays and objects a JSON body may have: enough for any real document,
/// and a bound for every parser downstream, the components' included.
pub const MAX_JSON_DEPTH: usize = 64;

/// An HTTP request for a component route, as it arrived (the body already bounded in size).
pub struct Incoming<'a> {
    pub content_type: Option<&'a [u8]>,
    pub query: Option<&'a str>,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: &'a [u8],
}

/// What the component gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The JSON body, or "null" without one.
    pub payload: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// The `x-user` header.
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// Checks a request: headers not too large, a body (if any) that is JSON sent as JSON, nested
/// at most [`MAX_JSON_DEPTH`] levels.
pub fn check(incoming: &Incoming) -> Result<Checked, Refusal> {
    let header_bytes: usize = incoming
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(refuse(
            431,
            format!(
                "the request headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"
            ),
        ));
    }
    let payload = if incoming.body.is_empty() {
        "null".to_string()
    } else {
        check_json_content_type(incoming.content_type)?;
        if let Err(problem) = serde_json::from_slice::<serde::de::IgnoredAny>(incoming.body) {
            return Err(refuse(
                400,
                format!("the request body is not valid JSON: {problem}"),
            ));
        }
        let depth = json_depth(incoming.body);
        if depth > MAX_JSON_DEPTH {
            return Err(refuse(
                400,
                format!(
                    "the request body nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
                ),
            ));
        }
        // Valid JSON is valid UTF-8.
        String::from_utf8(incoming.body.to_vec())
            .map_err(|_| refuse(400, "the request body is not UTF-8"))?
    };
    let query = incoming
        .query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = incoming
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect();
    let user = headers
        .iter()
        .find(|(name, _)| name == "x-user")
        .map(|(_, value)| value.clone());
    Ok(Checked {
        payload,
        query,
        headers,
        user,
    })
}

/// The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not
/// count); linear in the text.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn check_json_content_type(value: Option<&[u8]>) -> Result<(), Refusal> {
    let Some(value) = value else {
        return Err(refuse(
            415,
            "the request has a body but no Content-Type; send it as application/json",
        ));
    };
    let text = String::from_utf8_lossy(value);
    let media = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(refuse(
            415,
            format!("the Content-Type is {text:?}; send the body as application/json"),
        ))
    }
}

/// A query string (without the `?`) of these pairs, form-encoded: what the CLI and the console
/// put in the URLs they make.
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

/// `text` encoded to stand as one segment of a URL's path.
pub fn path_segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming<'a>(content_type: Option<&'a str>, body: &'a [u8]) -> Incoming<'a> {
        Incoming {
            content_type: content_type.map(str::as_bytes),
            query: Some("a=1&b=two%20words"),
            headers: vec![("X-User", b"alice"), ("Accept", b"*/*")],
            body,
        }
    }

    #[test]
    fn a_good_request_passes_with_its_parts() {
        let checked = check(&incoming(
            Some("application/json; charset=utf-8"),
            br#"{"a": 1}"#,
        ))
        .unwrap();
        assert_eq!(checked.payload, r#"{"a": 1}"#);
        assert_eq!(
            checked.query,
            vec![("a".into(), "1".into()), ("b".into(), "two words".into())]
        );
        assert_eq!(checked.user.as_deref(), Some("alice"));
        assert_eq!(checked.headers[0].0, "x-user");
        assert_eq!(check(&incoming(None, b"")).unwrap().payload, "null");
    }

    #[test]
    fn bad_requests_are_refused_with_status_and_reason() {
        let refused = |content_type, body: &[u8]| check(&incoming(content_type, body)).unwrap_err();
        assert_eq!(refused(None, b"{}").status, 415);
        assert_eq!(refused(Some("text/plain"), b"{}").status, 415);
        let malformed = refused(Some("application/json"), b"{\"a\":");
        assert_eq!(malformed.status, 400);
        assert!(malformed.message.contains("not valid JSON"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let too_deep = refused(Some("application/json"), deep.as_bytes());
        assert_eq!(too_deep.status, 400);
        assert!(
            too_deep
                .message
                .contains("nests 200 levels deep; the limit is 64"),
            "{}",
            too_deep.message
        );
        assert_eq!(json_depth(br#"{"a": "[[[[", "b": [{"c": "\\"]"}]}"#), 3);
        let big = vec![b'x'; MAX_HEADER_BYTES + 1];
        let headers = Incoming {
            content_type: None,
            query: None,
            headers: vec![("x-big", &big)],
            body: b"",
        };
        assert_eq!(check(&headers).unwrap_err().status, 431);
    }
}
