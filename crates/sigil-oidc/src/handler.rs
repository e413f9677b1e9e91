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
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        // http.ServeContent: Last-Modified (seconds), If-Modified-Since, Content-Length.
        let modified = snapshot.modified.map(crate::httpdate::truncate_to_secs);
        if let Some(m) = modified
            && let Ok(v) = HeaderValue::from_str(&crate::httpdate::format(m))
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        if let (Some(m), Some(since)) = (
            modified,
            header_str(req.headers(), "if-modified-since").and_then(crate::httpdate::parse),
        ) && m <= since
        {
            // Go drops the entity headers of a 304.
            h.remove(header::CONTENT_TYPE);
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return resp;
        }
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        *resp.body_mut() = Body::from(body);
        resp
    }
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
        format!("<a href=\"{}\">Moved Permanently</a>.\n\n", html_escape(location))
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
