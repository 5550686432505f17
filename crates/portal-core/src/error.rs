//! Input errors that name the field and the reason, shared by every value type and command.

use serde::Serialize;
use std::fmt;

/// An error from parsing one input value: it knows the field it belongs to by default.
pub trait InputError: std::error::Error {
    /// The field the value usually comes from (`"amount"`, `"ssn"`, ...).
    fn field(&self) -> &'static str;
    /// A stable machine-readable code (`"too_many_decimals"`, ...).
    fn code(&self) -> &'static str;
}

/// One field that failed validation, with a stable code and a plain-language reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field name, as the client sent it (`"amount"`, `"mandate.cap"`).
    pub field: String,
    /// A stable machine-readable code.
    pub code: String,
    /// A plain-language reason a member can act on.
    pub message: String,
}

impl FieldError {
    /// A field error from its parts.
    pub fn new(
        field: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        }
    }

    /// The same error reported against another field name.
    #[must_use]
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}

impl<E: InputError> From<E> for FieldError {
    fn from(e: E) -> Self {
        Self::new(e.field(), e.code(), e.to_string())
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every field error of one command, so a form can show them all at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid input: {}", parts.join("; "))
    }
}

impl ValidationErrors {
    /// A single-field error.
    pub fn one(e: impl Into<FieldError>) -> Self {
        Self(vec![e.into()])
    }

    /// Whether the given field has an error.
    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

/// Collects field errors while a command is parsed, so every bad field is reported together.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value, or records its error against `field`.
    pub fn check<T, E: Into<FieldError>>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(e.into().at(field));
                None
            }
        }
    }

    /// Records an error directly.
    pub fn push(&mut self, e: FieldError) {
        self.errors.push(e);
    }

    /// Whether no error has been recorded so far.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(value)` when nothing failed and the value is present.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ValidationErrors> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(ValidationErrors(vec![FieldError::new(
                "request",
                "incomplete",
                "the request is incomplete",
            )])),
            _ => Err(ValidationErrors(self.errors)),
        }
    }
}
