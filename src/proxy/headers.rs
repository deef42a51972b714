//! Which headers cross the proxy: a short allow-list towards the engine (so cookies, hosts
//! and other clients' secrets never leave), and the engine's headers back minus hop-by-hop
//! ones (RFC 9110 §7.6.1) and any named by its `Connection` header.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

/// Request headers passed on to the engine (everything else is dropped).
const FORWARDED_REQUEST_HEADERS: [&str; 5] = [
    "content-type",
    "accept",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// Whose credentials the engine sees: the client's `Authorization` reaches an engine only when
/// the operator asks for it, so a client's API key never leaves the router by default.
#[derive(Clone, Debug, Default)]
pub enum EngineAuth {
    /// No `Authorization` towards engines (the default).
    #[default]
    None,
    /// This `Authorization` value (`Bearer <--engine-api-key>`), whatever the client sent.
    Key(HeaderValue),
    /// The client's own `Authorization`, passed on (`--forward-client-auth`).
    ForwardClient,
}

impl EngineAuth {
    /// `Authorization: Bearer <key>` towards engines, marked sensitive (never logged). Err
    /// when the key cannot be a header value (control characters).
    pub fn key(key: &str) -> Result<EngineAuth, axum::http::header::InvalidHeaderValue> {
        let mut v = HeaderValue::from_str(&format!("Bearer {key}"))?;
        v.set_sensitive(true);
        Ok(EngineAuth::Key(v))
    }
}

/// Hop-by-hop response headers never passed back (plus any named by `Connection`).
/// `content-length` is dropped too: the body is always re-streamed.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
];

/// The client's headers the engine gets.
pub(super) fn forwarded_headers(incoming: &HeaderMap, auth: &EngineAuth) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in incoming.get_all(name) {
            out.append(HeaderName::from_static(name), value.clone());
        }
    }
    match auth {
        EngineAuth::None => {}
        EngineAuth::Key(v) => {
            out.insert(header::AUTHORIZATION, v.clone());
        }
        EngineAuth::ForwardClient => {
            for value in incoming.get_all(header::AUTHORIZATION) {
                out.append(header::AUTHORIZATION, value.clone());
            }
        }
    }
    if !out.contains_key(header::CONTENT_TYPE) {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    out
}

/// The engine's headers the client gets.
pub(super) fn response_headers(engine: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = engine
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(engine.len() + 1);
    for (name, value) in engine {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named_by_connection.iter().any(|c| c == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut engine = HeaderMap::new();
        engine.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        engine.insert("keep-alive", "timeout=5".parse().unwrap());
        engine.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        engine.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        engine.insert("x-secret-hop", "1".parse().unwrap());
        engine.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        engine.append("x-multi", "a".parse().unwrap());
        engine.append("x-multi", "b".parse().unwrap());
        let out = response_headers(&engine);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-multi"]);
        assert_eq!(out.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn only_known_request_headers_are_forwarded() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        incoming.insert(header::ACCEPT, "text/event-stream".parse().unwrap());
        incoming.insert(header::HOST, "router:8000".parse().unwrap());
        incoming.insert(header::COOKIE, "a=b".parse().unwrap());
        incoming.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        let out = forwarded_headers(&incoming, &EngineAuth::None);
        assert!(
            !out.contains_key(header::AUTHORIZATION),
            "the client's key stays at the router"
        );
        assert_eq!(out[header::ACCEPT], "text/event-stream");
        assert_eq!(out[header::CONTENT_TYPE], "application/json", "defaulted");
        assert!(!out.contains_key(header::HOST));
        assert!(!out.contains_key(header::COOKIE));
        assert!(!out.contains_key(header::CONTENT_LENGTH));

        let key = EngineAuth::Key("Bearer engine-secret".parse().unwrap());
        let out = forwarded_headers(&incoming, &key);
        assert_eq!(out[header::AUTHORIZATION], "Bearer engine-secret");
        assert_eq!(out.get_all(header::AUTHORIZATION).iter().count(), 1);
        let out = forwarded_headers(&incoming, &EngineAuth::ForwardClient);
        assert_eq!(out[header::AUTHORIZATION], "Bearer k");
    }
}
