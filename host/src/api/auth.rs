//! Operator actions (update, retrain, anything that changes what serves) need
//! `Authorization: Bearer <admin_token>`. Without a configured token they are allowed only on a
//! server that listens on a loopback address, where only local users can reach it.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;

/// Proof that the request may perform an operator action: take it as a handler argument.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.config.admin_token.as_deref() else {
            return if binds_loopback(&state.config.bind) {
                Ok(Operator)
            } else {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "operator_actions_disabled",
                    "operator actions are disabled on a public address until an admin token is set (admin_token or RECOHOST_ADMIN_TOKEN)",
                ))
            };
        };
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(Operator),
            Some(_) => Err(ApiError::unauthorized(
                "the bearer token is not the admin token",
            )),
            None => Err(ApiError::unauthorized(
                "this is an operator action: send `Authorization: Bearer <admin token>`",
            )),
        }
    }
}

/// Whether `bind` (host:port) is a loopback address.
fn binds_loopback(bind: &str) -> bool {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(address) => address.ip().is_loopback(),
        Err(_) => bind.starts_with("localhost:"),
    }
}

/// Compares without an early exit, so the time taken does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
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
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokex"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
    }
}
