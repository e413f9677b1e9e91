//! The two endpoints, as SPIRE's handler serves them: pure functions of the request and the
//! current key set.
//!
//! - `GET <prefix>/.well-known/openid-configuration`: the discovery document. Behind a proxy
//!   the `X-Forwarded-Host` and `X-Forwarded-Proto` (or `X-Forwarded-Scheme`, or `Forwarded:
//!   proto=`) headers stand for the request's (gorilla's `ProxyHeaders`, on this endpoint
//!   only). The host must pass the domain policy (400 otherwise).
//! - `GET <prefix>/keys`: the JWKS, never cached (`Cache-Control`, `Pragma`, `Expires`),
//!   `Last-Modified` when the keys last changed and `If-Modified-Since` answered with 304, as
//!   Go's `http.ServeContent`. 500 before the first successful poll, 501 with no JWT key.
//! - Anything else: Go's `ServeMux` 404; another method: 405; an unclean path: 301.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::config::{Config, split_host_port};
use crate::domain::DomainPolicy;
use crate::keys::{Snapshot, go_json_indent, jwks_document};
use crate::url::{AbsUrl, join_path, mux_clean};

pub type Body = Full<Bytes>;

/// What the handler needs from the configuration.
#[derive(Clone, Debug)]
pub struct Handler {
    policy: DomainPolicy,
    allow_insecure_scheme: bool,
    set_key_use: bool,
    jwt_issuer: Option<AbsUrl>,
    jwks_uri: Option<AbsUrl>,
    /// `/` when not configured.
    prefix: String,
    well_known_path: String,
    keys_path: String,
}

/// The discovery document, in SPIRE's member order.
#[derive(Serialize)]
struct Discovery<'a> {
    issuer: &'a str,
    jwks_uri: &'a str,
    authorization_endpoint: &'a str,
    response_types_supported: [&'a str; 1],
    subject_types_supported: [&'a str; 1],
    id_token_signing_alg_values_supported: [&'a str; 3],
}

// === impl Handler ===

impl Handler {
    pub fn new(config: &Config, policy: DomainPolicy) -> Self {
        let prefix = if config.server_path_prefix.is_empty() {
            "/".to_string()
        } else {
            config.server_path_prefix.clone()
        };
        // A prefix without a leading slash would make Go's mux read it as a host name; Sigil
        // treats it as the path it was meant to be.
        let rooted = if prefix.starts_with('/') {
            prefix.clone()
        } else {
            format!("/{prefix}")
        };
        Self {
            policy,
            allow_insecure_scheme: config.allow_insecure_scheme,
            set_key_use: config.set_key_use,
            jwt_issuer: config.jwt_issuer.clone(),
            jwks_uri: config.jwks_uri.clone(),
            well_known_path: join_path(&rooted, "/.well-known/openid-configuration"),
            keys_path: join_path(&rooted, "/keys"),
            prefix,
        }
    }

    /// Answers one request. `tls` says whether it came over HTTPS.
    pub fn handle<B>(&self, req: &Request<B>, tls: bool, keys: &Snapshot) -> Response<Body> {
        let path = req.uri().path();
        if req.method() != Method::CONNECT
            && let Some(clean) = mux_clean(path)
        {
            let location = match req.uri().query() {
                Some(q) => format!("{clean}?{q}"),
                None => clean,
            };
            return redirect(req.method(), &location);
        }
        if path == self.well_known_path {
            self.well_known(req, tls)
        } else if path == self.keys_path {
            self.keys(req, keys)
        } else {
            text_error(StatusCode::NOT_FOUND, "404 page not found")
        }
    }

    fn well_known<B>(&self, req: &Request<B>, tls: bool) -> Response<Body> {
        if req.method() != Method::GET {
            return text_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let headers = req.headers();
        let host = header_str(headers, "x-forwarded-host")
            .map(str::to_string)
            .unwrap_or_else(|| request_host(req));
        let scheme = proxy_scheme(headers).or_else(|| req.uri().scheme_str().map(str::to_string));

        let url_scheme = if self.allow_insecure_scheme && !tls && scheme.as_deref() != Some("https")
        {
            "http"
        } else {
            "https"
        };

        let issuer = match &self.jwt_issuer {
            Some(u) => u.raw.clone(),
            None if self.prefix != "/" => format!("{url_scheme}://{host}{}", rooted(&self.prefix)),
            None => format!("{url_scheme}://{host}"),
        };
        let jwks_uri = match (&self.jwks_uri, &self.jwt_issuer) {
            (Some(u), _) => u.raw.clone(),
            // SPIRE (until 1.13): without jwks_uri, a configured issuer also names the keys.
            (None, Some(iss)) => format!(
                "{}://{}{}",
                iss.scheme,
                iss.host,
                rooted(&join_path(&iss.path, "keys"))
            ),
            (None, None) => format!(
                "{url_scheme}://{host}{}",
                rooted(&join_path(&self.prefix, "keys"))
            ),
        };

        let domain = split_host_port(&host)
            .map(|(h, _)| h.to_string())
            .unwrap_or_else(|_| host.clone());
        if let Err(e) = self.policy.check(&domain) {
            return text_error(StatusCode::BAD_REQUEST, &e.to_string());
        }

        let doc = Discovery {
            issuer: &issuer,
            jwks_uri: &jwks_uri,
            authorization_endpoint: "",
            response_types_supported: ["id_token"],
            subject_types_supported: ["public"],
            id_token_signing_alg_values_supported: ["RS256", "ES256", "ES384"],
        };
        let mut resp = Response::new(Body::from(go_json_indent(&doc)));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        resp
    }

    fn keys<B>(&self, req: &Request<B>, snapshot: &Snapshot) -> Response<Body> {
        if req.method() != Method::GET {
            return text_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let Some(keys) = &snapshot.keys else {
            return text_error(StatusCode::INTERNAL_SERVER_ERROR, "document not available");
        };
        if keys.is_empty() {
            return text_error(
                StatusCode::NOT_IMPLEMENTED,
                "jwt not supported/enabled in this service",
            );
        }
        let body = jwks_document(keys, self.set_key_use);

        let mut resp = Response::new(Body::from(Bytes::new()));
        let h = resp.headers_mut();
        // The keys change with every rotation: clients must not keep a stale set.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        );
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        h.insert(header::EXPIRES, HeaderValue::from_static("0"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        // http.ServeContent: Last-Modified (seconds), its preconditions, a single range.
        let modified = snapshot.modified.map(crate::httpdate::truncate_to_secs);
        if let Some(m) = modified
            && let Ok(v) = HeaderValue::from_str(&crate::httpdate::format(m))
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        let date = |name: &str| header_str(req.headers(), name).and_then(crate::httpdate::parse);
        if let (Some(m), Some(since)) = (modified, date("if-unmodified-since"))
            && m > since
        {
            *resp.status_mut() = StatusCode::PRECONDITION_FAILED;
            return resp;
        }
        if let (Some(m), Some(since)) = (modified, date("if-modified-since"))
            && m <= since
        {
            // Go drops the entity headers of a 304.
            h.remove(header::CONTENT_TYPE);
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return resp;
        }
        // If-Range: the range only applies to the version the client has (there is no ETag,
        // so only a date can match).
        let range = header_str(req.headers(), "range").filter(|_| {
            match header_str(req.headers(), "if-range") {
                None => true,
                Some(v) => modified.is_some() && crate::httpdate::parse(v) == modified,
            }
        });
        let size = body.len();
        let (status, part) = match range.map(|r| parse_range(r, size)) {
            None | Some(Ok(None)) => (StatusCode::OK, None),
            Some(Ok(Some((start, len)))) => (StatusCode::PARTIAL_CONTENT, Some((start, len))),
            Some(Err(e)) => {
                let mut err = text_error(StatusCode::RANGE_NOT_SATISFIABLE, e.message());
                let eh = err.headers_mut();
                for (k, v) in resp.headers() {
                    if !eh.contains_key(k) {
                        eh.insert(k, v.clone());
                    }
                }
                if matches!(e, RangeError::NoOverlap)
                    && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
                {
                    eh.insert(header::CONTENT_RANGE, v);
                }
                return err;
            }
        };
        let h = resp.headers_mut();
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let body = match part {
            Some((start, len)) => {
                if let Ok(v) =
                    HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
                {
                    h.insert(header::CONTENT_RANGE, v);
                }
                body.as_bytes()[start..start + len].to_vec()
            }
            None => body.into_bytes(),
        };
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        *resp.status_mut() = status;
        *resp.body_mut() = Body::from(body);
        resp
    }
}

/// Why a `Range` header cannot be served (Go's messages).
#[derive(Debug, PartialEq, Eq)]
enum RangeError {
    Invalid,
    NoOverlap,
}

// === impl RangeError ===

impl RangeError {
    fn message(&self) -> &'static str {
        match self {
            RangeError::Invalid => "invalid range",
            RangeError::NoOverlap => "invalid range: failed to overlap",
        }
    }
}

/// Go's `parseRange` for a body of `size` bytes: the one range to serve (start, length), or
/// `None` to serve everything (several ranges: Go answers those with a multipart body, Sigil
/// with the whole document, which a client must accept too; ranges larger than the body).
fn parse_range(header: &str, size: usize) -> Result<Option<(usize, usize)>, RangeError> {
    let specs = header.strip_prefix("bytes=").ok_or(RangeError::Invalid)?;
    let mut ranges = Vec::new();
    let mut no_overlap = false;
    for spec in specs.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        if spec.is_empty() {
            continue;
        }
        let (start, end) = spec.split_once('-').ok_or(RangeError::Invalid)?;
        let (start, end) = (
            start.trim_matches([' ', '\t']),
            end.trim_matches([' ', '\t']),
        );
        let num = |s: &str| -> Result<usize, RangeError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RangeError::Invalid);
            }
            // Larger than any body: saturate, as the comparisons below only need the order.
            Ok(s.parse().unwrap_or(usize::MAX))
        };
        if start.is_empty() {
            // A suffix: the last `end` bytes.
            let n = num(end)?.min(size);
            ranges.push((size - n, n));
        } else {
            let first = num(start)?;
            if first >= size {
                no_overlap = true;
                continue;
            }
            let last = if end.is_empty() {
                size - 1
            } else {
                let last = num(end)?;
                if first > last {
                    return Err(RangeError::Invalid);
                }
                last.min(size - 1)
            };
            ranges.push((first, last - first + 1));
        }
    }
    if no_overlap && ranges.is_empty() {
        return Err(RangeError::NoOverlap);
    }
    let total: usize = ranges.iter().map(|r| r.1).sum();
    Ok(match ranges.as_slice() {
        [one] if total <= size => Some(*one),
        _ => None,
    })
}

/// `r.Host` in Go: the absolute-form URI's authority, else the `Host` header.
fn request_host<B>(req: &Request<B>) -> String {
    if let Some(a) = req.uri().authority() {
        return a.to_string();
    }
    header_str(req.headers(), "host")
        .unwrap_or_default()
        .to_string()
}

/// gorilla's `ProxyHeaders` scheme: `X-Forwarded-Proto`, then `X-Forwarded-Scheme`, then
/// `Forwarded: proto=http|https`, lowercased.
fn proxy_scheme(headers: &HeaderMap) -> Option<String> {
    if let Some(p) = header_str(headers, "x-forwarded-proto").filter(|p| !p.is_empty()) {
        return Some(p.to_ascii_lowercase());
    }
    if let Some(p) = header_str(headers, "x-forwarded-scheme").filter(|p| !p.is_empty()) {
        return Some(p.to_ascii_lowercase());
    }
    let forwarded = header_str(headers, "forwarded")?.to_ascii_lowercase();
    let at = forwarded.find("proto=")?;
    let rest = &forwarded[at + "proto=".len()..];
    ["https", "http"]
        .into_iter()
        .find(|s| rest.starts_with(s))
        .map(str::to_string)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// How Go's `url.URL.String` writes a path after a host: always with a leading slash.
fn rooted(path: &str) -> String {
    if path.is_empty() || path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Go's `http.Error`: text, `nosniff`, the message and a newline.
pub fn text_error(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{msg}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Go's `http.Redirect` with 301, as `ServeMux` answers an unclean path.
fn redirect(method: &Method, location: &str) -> Response<Body> {
    let body = if *method == Method::GET || *method == Method::HEAD {
        format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(location)
        )
    } else {
        String::new()
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if *method == Method::GET || *method == Method::HEAD {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    resp
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Fetched, JwtKey, KeyStore};
    use http_body_util::BodyExt as _;
    use sigil_spiffe::jwk::Jwk;
    use std::time::{Duration, UNIX_EPOCH};

    const X: &str = "ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k";
    const Y: &str = "tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM";

    fn key(kid: &str) -> JwtKey {
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": X, "y": Y
        }))
        .unwrap();
        JwtKey {
            kid: kid.into(),
            key: jwk.public_key().unwrap().unwrap(),
        }
    }

    fn handler(extra: &str) -> Handler {
        let text = format!(
            "domains = [\"localhost\", \"oidc.test\"]\ninsecure_addr = \":0\"\nserver_api {{\n address = \"unix:///s\"\n}}\n{extra}"
        );
        let c = Config::parse(&text).unwrap();
        Handler::new(&c, DomainPolicy::allowlist(&c.domains).unwrap())
    }

    fn snapshot(keys: Vec<JwtKey>) -> Snapshot {
        let store = KeyStore::new();
        store.update(
            Fetched {
                fingerprint: vec![1],
                keys,
            },
            UNIX_EPOCH + Duration::from_secs(1_136_214_245),
        );
        store.snapshot()
    }

    fn get(path: &str, host: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method("GET")
            .uri(path)
            .header("host", host)
    }

    fn call(
        h: &Handler,
        req: hyper::http::request::Builder,
        keys: &Snapshot,
    ) -> (StatusCode, HeaderMap, String) {
        let resp = h.handle(&req.body(()).unwrap(), false, keys);
        let (parts, body) = resp.into_parts();
        let bytes = match block_on(body.collect()) {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn discovery_document_as_spire() {
        let h = handler("allow_insecure_scheme = true\n");
        let keys = snapshot(vec![key("kid1")]);
        let (status, headers, body) = call(
            &h,
            get("/.well-known/openid-configuration", "localhost:8080"),
            &keys,
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\n  \"issuer\": \"http://localhost:8080\",\n  \"jwks_uri\": \"http://localhost:8080/keys\",\n  \"authorization_endpoint\": \"\",\n  \"response_types_supported\": [\n    \"id_token\"\n  ],\n  \"subject_types_supported\": [\n    \"public\"\n  ],\n  \"id_token_signing_alg_values_supported\": [\n    \"RS256\",\n    \"ES256\",\n    \"ES384\"\n  ]\n}"
        );
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert!(headers.get("cache-control").is_none());

        // Behind a TLS-terminating proxy: its headers name the host and scheme.
        let (_, _, body) = call(
            &h,
            get("/.well-known/openid-configuration", "127.0.0.1:9")
                .header("x-forwarded-host", "oidc.test")
                .header("x-forwarded-proto", "HTTPS"),
            &keys,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["issuer"], "https://oidc.test");
        assert_eq!(v["jwks_uri"], "https://oidc.test/keys");

        // Without allow_insecure_scheme, always https.
        let h2 = handler("");
        let (_, _, body) = call(
            &h2,
            get("/.well-known/openid-configuration", "oidc.test"),
            &keys,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["issuer"], "https://oidc.test");
    }

    #[test]
    fn issuer_jwks_uri_and_prefix() {
        let keys = snapshot(vec![key("kid1")]);
        let doc = |h: &Handler, path: &str| {
            let (s, _, body) = call(h, get(path, "oidc.test"), &keys);
            assert_eq!(s, StatusCode::OK, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        };
        let h = handler("jwt_issuer = \"https://issuer.test/td/\"\n");
        let v = doc(&h, "/.well-known/openid-configuration");
        assert_eq!(v["issuer"], "https://issuer.test/td/");
        assert_eq!(v["jwks_uri"], "https://issuer.test/td/keys");

        let h = handler(
            "jwt_issuer = \"https://issuer.test\"\njwks_uri = \"https://cdn.test/k?a=1&b=2\"\n",
        );
        let (_, _, body) = call(
            &h,
            get("/.well-known/openid-configuration", "oidc.test"),
            &keys,
        );
        // Go's encoder escapes '&'.
        assert!(
            body.contains("\"jwks_uri\": \"https://cdn.test/k?a=1\\u0026b=2\""),
            "{body}"
        );

        let h = handler("server_path_prefix = \"/instance/1\"\n");
        let v = doc(&h, "/instance/1/.well-known/openid-configuration");
        assert_eq!(v["issuer"], "https://oidc.test/instance/1");
        assert_eq!(v["jwks_uri"], "https://oidc.test/instance/1/keys");
        let (s, _, _) = call(&h, get("/instance/1/keys", "oidc.test"), &keys);
        assert_eq!(s, StatusCode::OK);
        let (s, _, _) = call(
            &h,
            get("/.well-known/openid-configuration", "oidc.test"),
            &keys,
        );
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[test]
    fn domain_policy_and_errors() {
        let h = handler("");
        let keys = snapshot(vec![key("kid1")]);
        let (s, headers, body) = call(
            &h,
            get("/.well-known/openid-configuration", "evil.test:443"),
            &keys,
        );
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body, "domain \"evil.test\" is not allowed\n");
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        // X-Forwarded-Host is what is checked.
        let (s, _, _) = call(
            &h,
            get("/.well-known/openid-configuration", "oidc.test")
                .header("x-forwarded-host", "evil.test"),
            &keys,
        );
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // /keys has no domain policy in SPIRE.
        let (s, _, _) = call(&h, get("/keys", "evil.test"), &keys);
        assert_eq!(s, StatusCode::OK);

        let (s, _, body) = call(&h, get("/nope", "oidc.test"), &keys);
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::NOT_FOUND, "404 page not found\n")
        );
        for path in ["/keys", "/.well-known/openid-configuration"] {
            let req = Request::builder()
                .method("POST")
                .uri(path)
                .header("host", "oidc.test");
            let (s, _, body) = call(&h, req, &keys);
            assert_eq!(
                (s, body.as_str()),
                (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            );
        }
        let (s, headers, _) = call(&h, get("/a/../keys", "oidc.test"), &keys);
        assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(headers["location"], "/keys");

        // Before the first poll, and with no JWT authority.
        let (s, _, body) = call(&h, get("/keys", "oidc.test"), &Snapshot::default());
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "document not available\n"
            )
        );
        let (s, _, body) = call(&h, get("/keys", "oidc.test"), &snapshot(vec![]));
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::NOT_IMPLEMENTED,
                "jwt not supported/enabled in this service\n"
            )
        );
    }

    #[test]
    fn jwks_as_go_jose_with_spire_headers() {
        let keys = snapshot(vec![key("kid1"), key("kid2")]);
        let (s, headers, body) = call(&handler(""), get("/keys", "oidc.test"), &keys);
        assert_eq!(s, StatusCode::OK);
        let one = |kid: &str, use_: &str| {
            format!(
                "    {{\n{use_}      \"kty\": \"EC\",\n      \"kid\": \"{kid}\",\n      \"crv\": \"P-256\",\n      \"alg\": \"ES256\",\n      \"x\": \"{X}\",\n      \"y\": \"{Y}\"\n    }}"
            )
        };
        assert_eq!(
            body,
            format!(
                "{{\n  \"keys\": [\n{},\n{}\n  ]\n}}",
                one("kid1", ""),
                one("kid2", "")
            )
        );
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            headers["cache-control"],
            "no-cache, no-store, must-revalidate"
        );
        assert_eq!(headers["pragma"], "no-cache");
        assert_eq!(headers["expires"], "0");
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert_eq!(headers["last-modified"], "Mon, 02 Jan 2006 15:04:05 GMT");
        assert_eq!(headers["content-length"], body.len().to_string().as_str());

        let (_, _, body) = call(
            &handler("set_key_use = true\n"),
            get("/keys", "oidc.test"),
            &keys,
        );
        assert!(
            body.starts_with(&format!(
                "{{\n  \"keys\": [\n{}",
                one("kid1", "      \"use\": \"sig\",\n")
            )),
            "{body}"
        );

        // Conditional GET, as http.ServeContent.
        let (s, headers, body) = call(
            &handler(""),
            get("/keys", "oidc.test").header("if-modified-since", "Mon, 02 Jan 2006 15:04:05 GMT"),
            &keys,
        );
        assert_eq!((s, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
        assert!(headers.get("content-type").is_none());
        let (s, _, _) = call(
            &handler(""),
            get("/keys", "oidc.test").header("if-modified-since", "Mon, 02 Jan 2006 15:04:04 GMT"),
            &keys,
        );
        assert_eq!(s, StatusCode::OK);
    }

    #[test]
    fn ranges_as_serve_content() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 10))));
        assert_eq!(parse_range("bytes=-5", 100), Ok(Some((95, 5))));
        assert_eq!(parse_range("bytes=95-200", 100), Ok(Some((95, 5))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("bytes=200-", 100), Err(RangeError::NoOverlap));
        assert_eq!(parse_range("bytes=5-1", 100), Err(RangeError::Invalid));
        assert_eq!(parse_range("items=0-1", 100), Err(RangeError::Invalid));

        let keys = snapshot(vec![key("kid1")]);
        let h = handler("");
        let (_, _, full) = call(&h, get("/keys", "oidc.test"), &keys);
        let (s, headers, body) = call(
            &h,
            get("/keys", "oidc.test").header("range", "bytes=0-9"),
            &keys,
        );
        assert_eq!(s, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, full[..10]);
        assert_eq!(
            headers["content-range"],
            format!("bytes 0-9/{}", full.len()).as_str()
        );
        let (s, headers, body) = call(
            &h,
            get("/keys", "oidc.test").header("range", "bytes=9999-"),
            &keys,
        );
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid range: failed to overlap\n"
            )
        );
        assert_eq!(
            headers["content-range"],
            format!("bytes */{}", full.len()).as_str()
        );
        // If-Range with another date: the whole document.
        let (s, _, _) = call(
            &h,
            get("/keys", "oidc.test")
                .header("range", "bytes=0-9")
                .header("if-range", "Mon, 02 Jan 2006 15:04:04 GMT"),
            &keys,
        );
        assert_eq!(s, StatusCode::OK);
        let (s, _, _) = call(
            &h,
            get("/keys", "oidc.test")
                .header("if-unmodified-since", "Mon, 02 Jan 2006 15:04:04 GMT"),
            &keys,
        );
        assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    }

    #[test]
    fn rsa_and_unsupported_keys() {
        use sigil_spiffe::jwk::PublicKeyParams;
        let rsa = JwtKey {
            kid: "r".into(),
            key: PublicKeyParams::Rsa {
                n: vec![0xc1; 256],
                e: vec![1, 0, 1],
            },
        };
        let ed = JwtKey {
            kid: "o".into(),
            key: PublicKeyParams::Ed25519 { x: vec![7; 32] },
        };
        let body = crate::keys::jwks_document(&[rsa, ed], false);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["keys"][0]["alg"], "RS256");
        assert_eq!(v["keys"][0]["e"], "AQAB");
        assert!(body.find("\"n\"").unwrap() < body.find("\"e\"").unwrap());
        // go-jose writes the key; SPIRE finds no algorithm for it and leaves `alg` out.
        assert_eq!(v["keys"][1]["kty"], "OKP");
        assert!(v["keys"][1].get("alg").is_none());
    }
}
