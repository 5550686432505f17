//! Errors as RFC 9457 problem details, and request bodies read field by field so that every bad
//! input names its field.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portal_core::error::{FieldError, ValidationErrors, Validator};
use portal_core::ports::{GatewayError, StoreError};
use portal_core::services::ServiceError;
use serde_json::{Map, Value, json};

/// An error answer: `application/problem+json` with a list of field errors.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    extra: Map<String, Value>,
    retry_after: Option<i64>,
}

impl Problem {
    /// A problem with a status, a short title and a detail.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    /// 422 with field errors.
    pub fn invalid(errors: ValidationErrors) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request",
            "Some fields are not valid; see errors.",
        );
        p.errors = errors.0;
        p
    }

    /// 400 for a body that is not the JSON object expected.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Malformed request", detail)
    }

    /// 401.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Not logged in",
            "Log in to continue.",
        )
    }

    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No such {what}."),
        )
    }

    /// 429 with `Retry-After`.
    pub fn too_many(retry_after_secs: i64) -> Self {
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "Too many attempts; wait a little and try again.",
        );
        p.retry_after = Some(retry_after_secs.max(1));
        p
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://health-connector.example/problems/{}", self.status.as_u16()),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "errors": self.errors,
        });
        if let Some(obj) = body.as_object_mut() {
            obj.extend(self.extra);
        }
        let mut r = (self.status, axum::Json(body)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, s);
        }
        r
    }
}

impl From<ValidationErrors> for Problem {
    fn from(e: ValidationErrors) -> Self {
        Problem::invalid(e)
    }
}

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Self {
        use ServiceError as E;
        match e {
            E::Invalid(v) => Problem::invalid(v),
            E::NotFound(what) => Problem::not_found(what),
            E::InvalidCredentials => Problem::new(
                StatusCode::UNAUTHORIZED,
                "Login failed",
                "The username or password is incorrect.",
            ),
            E::Locked { until } => {
                let secs = (until - chrono::Utc::now()).num_seconds();
                let mut p = Problem::too_many(secs);
                p.title = "Account locked";
                p.detail = "Too many failed attempts. Wait 15 minutes, or reset your password with Forgot Password.".into();
                p.with("locked_until", json!(until))
            }
            E::EmailNotVerified { account_id } => Problem::new(
                StatusCode::FORBIDDEN,
                "Email not confirmed",
                "Enter the code we emailed you to finish creating your account.",
            )
            .with("account_id", json!(account_id)),
            E::Unauthenticated => Problem::unauthenticated(),
            E::NoMatch => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "No match",
                "The details you entered don't match our records.",
            ),
            E::Conflict(msg) => Problem::new(StatusCode::CONFLICT, "Conflict", msg),
            E::Rejected(msg) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "Not possible", msg),
            E::InvalidToken => Problem::new(
                StatusCode::BAD_REQUEST,
                "Invalid link or code",
                "This link or code is invalid or has expired.",
            ),
            E::Gateway(g) => {
                tracing::warn!(error = %g, "payment gateway error");
                match g {
                    GatewayError::Rejected(_) => Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Payment not possible",
                        "The payment service refused the request. Check the details and try again.",
                    ),
                    _ => Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Payment service unavailable",
                        "The payment service is not answering. Please try again in a few minutes.",
                    ),
                }
            }
            E::Store(StoreError::Conflict) => Problem::new(
                StatusCode::CONFLICT,
                "Busy",
                "The account was changed at the same time; please try again.",
            ),
            E::Store(s) => {
                tracing::error!(error = %s, "storage error");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "Please try again in a few minutes.",
                )
            }
            E::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "Something went wrong on our side. Please try again.",
                )
            }
        }
    }
}

/// Longest string accepted in any field.
const MAX_FIELD_CHARS: usize = 1000;

/// A JSON object body, read field by field.
#[derive(Debug)]
pub struct Body(Map<String, Value>);

impl Body {
    /// Parses bytes as a JSON object; an empty body is an empty object.
    pub fn parse(bytes: &[u8]) -> Result<Body, Problem> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(Map::new()));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(Problem::malformed("The body must be a JSON object.")),
            Err(e) => Err(Problem::malformed(format!(
                "The body is not valid JSON ({}).",
                e.classify_str()
            ))),
        }
    }

    /// Records an error for every field not in `allowed`.
    pub fn only(&self, allowed: &[&str], v: &mut Validator) {
        for k in self.0.keys() {
            if !allowed.contains(&k.as_str()) {
                let name: String = k.chars().take(64).collect();
                v.push(FieldError::new(
                    name,
                    "unknown_field",
                    "this field is not part of the request",
                ));
            }
        }
    }

    /// An optional string field (absent or null is `None`).
    pub fn opt_str(&self, field: &str, v: &mut Validator) -> Option<String> {
        match self.0.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() > MAX_FIELD_CHARS => {
                v.push(FieldError::new(
                    field,
                    "too_long",
                    format!("at most {MAX_FIELD_CHARS} characters"),
                ));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                v.push(FieldError::new(
                    field,
                    "type",
                    "send this field as a string",
                ));
                None
            }
        }
    }

    /// A required whole-number field (a JSON integer from 0 to 4,294,967,295).
    pub fn uint(&self, field: &str, v: &mut Validator) -> Option<u32> {
        match self.0.get(field) {
            None | Some(Value::Null) => {
                v.push(FieldError::new(field, "required", "this field is required"));
                None
            }
            Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    v.push(FieldError::new(
                        field,
                        "format",
                        "send a whole number that is not negative",
                    ));
                    None
                }
            },
            Some(_) => {
                v.push(FieldError::new(
                    field,
                    "type",
                    "send this field as a number",
                ));
                None
            }
        }
    }

    /// A required string field.
    pub fn str(&self, field: &str, v: &mut Validator) -> Option<String> {
        let present = self.0.get(field).is_some_and(|x| !x.is_null());
        let s = self.opt_str(field, v);
        if !present {
            v.push(FieldError::new(field, "required", "this field is required"));
        }
        s
    }

    /// An optional boolean field.
    pub fn opt_bool(&self, field: &str, v: &mut Validator) -> Option<bool> {
        match self.0.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                v.push(FieldError::new(field, "type", "send true or false"));
                None
            }
        }
    }
}

trait Classify {
    fn classify_str(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "could not be read",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "it ends too early",
        }
    }
}
