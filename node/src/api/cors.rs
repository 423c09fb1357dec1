//! Cross-origin requests from browser apps (`security.cors.allowed_origins`): preflights are
//! answered here, listed origins get the CORS headers (with credentials), and a request that
//! carries an `Origin` that is neither this server's own nor listed is refused with 403
//! `CORS_ORIGIN_NOT_ALLOWED` before it reaches a handler, so a page on another site cannot make
//! a browser send a state-changing request with its stored credentials.
//!
//! Written here rather than with tower-http's `CorsLayer`: tower-http is in the build only
//! through reqwest (object storage), and turning on its `cors` feature re-keys reqwest,
//! object_store and all of DataFusion, a full rebuild for a few header rules.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{App, error_response};

/// How long a browser may cache a preflight answer.
pub const PREFLIGHT_MAX_AGE_SECS: u64 = 600;
/// What preflights allow: the methods and request headers the API uses.
const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";
const ALLOWED_HEADERS: &str = "authorization, content-type, last-event-id";
/// Response headers a script may read.
const EXPOSED_HEADERS: &str = "retry-after, content-type";

/// How a request's `Origin` relates to this server's allow-list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OriginCheck {
    /// No `Origin` header (not a browser's cross-origin call) or this server's own origin.
    NotCross,
    /// Listed by name: CORS headers with credentials.
    Listed,
    /// Allowed by a `*` entry: CORS headers, no credentials.
    Any,
    Refused,
}

/// Check `headers`' `Origin` against `allowed` (exact origins, or `*`).
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> OriginCheck {
    let Some(origin) = headers.get(header::ORIGIN) else { return OriginCheck::NotCross };
    let Ok(origin) = origin.to_str() else { return OriginCheck::Refused };
    // Same origin: the authority after the scheme is the Host the browser sent it to.
    let authority = origin.split_once("://").map(|(_, a)| a);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if authority.is_some() && authority == host {
        return OriginCheck::NotCross;
    }
    if allowed.iter().any(|a| a == origin) {
        OriginCheck::Listed
    } else if allowed.iter().any(|a| a == "*") {
        OriginCheck::Any
    } else {
        OriginCheck::Refused
    }
}

/// An entry of `security.cors.allowed_origins`: `*`, or `scheme://host[:port]` with nothing after.
pub fn valid_origin(entry: &str) -> bool {
    if entry == "*" {
        return true;
    }
    let Some((scheme, rest)) = entry.split_once("://") else { return false };
    // Browsers send origins in lower case and without the scheme's default port: an entry
    // written otherwise would never match.
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest.len() <= 253 + 6
        && !rest.ends_with(default_port)
        && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]".contains(&b))
}

fn add_cors_headers(headers: &mut HeaderMap, origin: &HeaderValue, check: OriginCheck) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if check == OriginCheck::Listed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
}

/// The middleware: see the module comment.
pub async fn cors(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let check = check_origin(request.headers(), &app.cors_allowed_origins);
    let origin = request.headers().get(header::ORIGIN).cloned();
    let origin = match (check, origin) {
        (OriginCheck::NotCross, _) | (_, None) => return next.run(request).await,
        (OriginCheck::Refused, Some(o)) => {
            let shown = String::from_utf8_lossy(o.as_bytes()).chars().take(200).collect::<String>();
            return error_response(
                StatusCode::FORBIDDEN,
                "CORS_ORIGIN_NOT_ALLOWED",
                &format!("origin '{shown}' is not in security.cors.allowed_origins"),
                start,
            );
        }
        (_, Some(o)) => o,
    };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !preflight {
        let mut response = next.run(request).await;
        add_cors_headers(response.headers_mut(), &origin, check);
        response.headers_mut().insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
        return response;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    add_cors_headers(h, &origin, check);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
    // A preflight asking for another method or header gets the same answer: the browser
    // compares it with what it asked and refuses by itself.
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(PREFLIGHT_MAX_AGE_SECS));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn origins_are_matched_exactly() {
        let allowed = vec!["https://app.example.com".to_string(), "http://localhost:3000".to_string()];
        let check = |o: Option<&str>| check_origin(&headers(o, "db.example.com:8080"), &allowed);
        assert_eq!(check(None), OriginCheck::NotCross);
        assert_eq!(check(Some("http://db.example.com:8080")), OriginCheck::NotCross);
        assert_eq!(check(Some("https://app.example.com")), OriginCheck::Listed);
        assert_eq!(check(Some("http://localhost:3000")), OriginCheck::Listed);
        for refused in ["https://app.example.com.evil.io", "http://app.example.com", "null", "http://localhost:3001"] {
            assert_eq!(check(Some(refused)), OriginCheck::Refused, "{refused}");
        }
        let any = vec!["*".to_string()];
        assert_eq!(check_origin(&headers(Some("https://x.io"), "h"), &any), OriginCheck::Any);
        assert_eq!(check_origin(&headers(Some("https://x.io"), "h"), &[]), OriginCheck::Refused);
    }

    #[test]
    fn allow_list_entries_are_checked() {
        for ok in ["*", "https://app.example.com", "http://localhost:3000", "http://[::1]:8080"] {
            assert!(valid_origin(ok), "{ok}");
        }
        for bad in [
            "",
            "app.example.com",
            "https://",
            "https://a.com/path",
            "ftp://a.com",
            "https://a.com/",
            "https://App.com",
            "https://a.com:443",
            "http://a.com:80",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
    }
}
