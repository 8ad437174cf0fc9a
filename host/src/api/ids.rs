//! External IDs as clients send them: JSON integers (as in the original API) or strings.
//! Both forms name the same entity: `123` and `"123"` are one user.

use serde_json::Value;

use super::error::ApiError;

/// The schema of an external ID in the OpenAPI document: a non-negative integer, or a string
/// of 1 to [`MAX_ID_LENGTH`] characters, not blank, without control characters.
pub struct ExternalId;

impl utoipa::PartialSchema for ExternalId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(MAX_INTEGER_ID as f64)),
            )
            .item(text_id())
            .description(Some(
                "An ID as the client knows it: an integer or a string (123 and \"123\" are the same)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ExternalId {}

/// An ID in a path: its text form.
pub struct PathId;

impl utoipa::PartialSchema for PathId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_id().into()
    }
}

impl utoipa::ToSchema for PathId {}

/// What [`from_text`] accepts, as a JSON schema: 1 to [`MAX_ID_LENGTH`] characters, not
/// blank, no control characters.
fn text_id() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LENGTH))
        .pattern(Some(ID_PATTERN))
}

/// Not blank, no control characters (C0, DEL, C1: what `char::is_control` means).
const ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// Largest ID accepted as a JSON integer: 2^53 - 1, the largest integer a JavaScript (or any
/// double-based) client reads exactly. Larger numeric IDs travel as strings, both ways.
pub const MAX_INTEGER_ID: u64 = (1 << 53) - 1;

/// Longest external ID accepted, in characters.
pub const MAX_ID_LENGTH: usize = 128;

/// Validates a JSON ID and returns its canonical string form.
pub fn from_json(field: &str, value: &Value) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::bad_request("invalid_id", format!("`{field}` {why}"));
    match value {
        Value::Number(number) => {
            if let Some(id) = number.as_u64() {
                if id > MAX_INTEGER_ID {
                    return Err(invalid(
                        "is an integer too large for every JSON client to read exactly (over 2^53 - 1): send it as a string",
                    ));
                }
                Ok(id.to_string())
            } else if number.as_i64().is_some() {
                Err(invalid("must not be negative"))
            } else {
                Err(invalid("must be an integer or a string, not a fraction"))
            }
        }
        Value::String(text) => from_text(field, text),
        Value::Null => Err(invalid("is required")),
        _ => Err(invalid("must be an integer or a string")),
    }
}

/// Validates an ID given as text (a path segment or a JSON string).
pub fn from_text(field: &str, text: &str) -> Result<String, ApiError> {
    let invalid = |why: String| ApiError::bad_request("invalid_id", format!("`{field}` {why}"));
    if text.trim().is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if text.chars().count() > MAX_ID_LENGTH {
        return Err(invalid(format!(
            "must be at most {MAX_ID_LENGTH} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters".into()));
    }
    Ok(text.to_string())
}

/// An ID as JSON: an integer when it is one in canonical form, so integer clients get
/// integers back; a string otherwise.
pub fn to_json(id: &str) -> Value {
    let canonical = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'));
    match id.parse::<u64>() {
        Ok(number) if canonical && number <= MAX_INTEGER_ID => Value::from(number),
        _ => Value::from(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_and_strings_map_to_one_canonical_form() {
        assert_eq!(from_json("user_id", &json!(123)).unwrap(), "123");
        assert_eq!(from_json("user_id", &json!("123")).unwrap(), "123");
        assert_eq!(from_json("user_id", &json!("alice")).unwrap(), "alice");
        assert_eq!(to_json("123"), json!(123));
        assert_eq!(to_json("0123"), json!("0123"));
        assert_eq!(to_json("alice"), json!("alice"));
        assert_eq!(to_json("9007199254740991"), json!(9007199254740991u64));
        assert_eq!(to_json("9007199254740992"), json!("9007199254740992"));
        assert!(from_json("user_id", &json!(9007199254740992u64)).is_err());
        assert_eq!(
            from_json("user_id", &json!("9007199254740992")).unwrap(),
            "9007199254740992"
        );
    }

    #[test]
    fn rejects_negative_fractional_empty_long_and_odd_ids() {
        for bad in [
            json!(-1),
            json!(1.5),
            json!(""),
            json!("  "),
            json!(null),
            json!([1]),
            json!(true),
            json!("a\u{0}b"),
        ] {
            assert!(from_json("user_id", &bad).is_err(), "{bad} accepted");
        }
        assert!(from_json("user_id", &json!("x".repeat(129))).is_err());
        assert!(from_json("user_id", &json!("x".repeat(128))).is_ok());
    }
}
