//! Operator actions (update, retrain, anything that changes what serves) need
//! `Authorization: Bearer <admin_token>`. Without a configured token they are allowed only on a
//! server that listens on a loopback address, where only local users can reach it, and only
//! from the server's own origin: a web page the operator happens to open must not be able to
//! POST to them (cross-site request forgery), nor reach them under another host name that
//! resolves to 127.0.0.1 (DNS rebinding). So a token-less request must name a loopback host
//! in `Host`, and a browser's `Origin`, when sent, must be that same host and port.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// Proof that the request may perform an operator action: take it as a handler argument.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.config.admin_token.as_deref() else {
            if !binds_loopback(&state.config.bind) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "operator_actions_disabled",
                    "operator actions are disabled on a public address until an admin token is set (admin_token or RECOHOST_ADMIN_TOKEN)",
                ));
            }
            let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
            return match same_local_origin(header(HOST), header(ORIGIN)) {
                Ok(()) => Ok(Operator),
                Err(reason) => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin_refused",
                    format!(
                        "{reason}: without an admin token, operator actions are accepted only from the server's own loopback address (set admin_token to allow others)"
                    ),
                )),
            };
        };
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(Operator),
            Some(_) => Err(ApiError::unauthorized(
                "the bearer token is not the admin token",
            )),
            None => Err(ApiError::unauthorized(
                "this is an operator action: send `Authorization: Bearer <admin token>`",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Whether `bind` (host:port) is a loopback address.
fn binds_loopback(bind: &str) -> bool {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(address) => address.ip().is_loopback(),
        Err(_) => bind.starts_with("localhost:"),
    }
}

/// Accepts a request whose `Host` names a loopback host and whose `Origin`, if any, is that
/// same host and port; the reason otherwise.
fn same_local_origin(host: Option<&str>, origin: Option<&str>) -> Result<(), String> {
    let host = host.ok_or("the request has no Host header")?;
    if !is_loopback_host(host) {
        return Err(format!("Host {host:?} is not a loopback address"));
    }
    let Some(origin) = origin else {
        // Not a browser's cross-origin request (browsers send Origin with every POST that
        // crosses origins): curl, scripts, the CLI.
        return Ok(());
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(format!("the request comes from the origin {origin:?}"))
    }
}

/// Whether a `Host` value (`name[:port]`) names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        assert!(binds_loopback("127.0.0.1:8080"));
        assert!(binds_loopback("[::1]:8080"));
        assert!(binds_loopback("localhost:8080"));
        assert!(!binds_loopback("0.0.0.0:8080"));
        assert!(!binds_loopback("10.0.0.5:80"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn only_the_servers_own_loopback_origin_may_act_without_a_token() {
        assert!(same_local_origin(Some("127.0.0.1:8080"), None).is_ok());
        assert!(same_local_origin(Some("localhost:8080"), Some("http://localhost:8080")).is_ok());
        assert!(same_local_origin(Some("[::1]:8080"), Some("http://[::1]:8080")).is_ok());
        // A page elsewhere posting to the operator's local server.
        assert!(same_local_origin(Some("127.0.0.1:8080"), Some("https://evil.example")).is_err());
        assert!(same_local_origin(Some("127.0.0.1:8080"), Some("http://127.0.0.1:3000")).is_err());
        assert!(same_local_origin(Some("127.0.0.1:8080"), Some("null")).is_err());
        // DNS rebinding: the attacker's name resolves to 127.0.0.1.
        assert!(same_local_origin(Some("evil.example:8080"), None).is_err());
        assert!(
            same_local_origin(Some("evil.example:8080"), Some("http://evil.example:8080")).is_err()
        );
        assert!(same_local_origin(None, None).is_err());
    }
}
