//! Why a change asked through the API was refused, without HTTP: a `Reason` and the
//! problems, each naming its field (`config::FieldError`). The store and the main loop
//! return a `Refusal`; `api` alone turns reasons (and, for a config the change would make
//! invalid, each error's `ErrorKind`) into Cloudflare's error codes and HTTP statuses, and
//! names fields in the API's terms.

use std::fmt;

use crate::{
    config::{ErrorKind, FieldError},
    store::{Kind, Store},
};

/// What kind of refusal: each is one error code and one HTTP status in the API, except
/// `Invalid` from validation, whose errors each carry their own `ErrorKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The body is not JSON, not an object, has a value of the wrong type or an unknown field.
    BadBody,
    /// A value is out of range or inconsistent (the config validation's rules).
    Invalid,
    /// The object refers to a monitor or pool id that does not exist.
    MissingReference,
    /// The object is still used by another (a monitor by a pool, a pool by a load balancer).
    InUse,
    /// No object has this id.
    NotFound,
    /// The change was valid but could not be saved or applied; nothing changed.
    Internal,
}

/// The store a change would make, and the object it changed: validation errors about it
/// name objects by their index in this store (`pools[3].origins[0].weight`), which the API
/// turns into fields of the body and names of other objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub kind: Kind,
    pub id: String,
    pub store: Box<Store>,
}

/// A refused change; nothing changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: Reason,
    pub errors: Vec<FieldError>,
    /// Set when `errors` come from validating the config that `subject.store` makes.
    pub subject: Option<Subject>,
}

impl Refusal {
    /// One problem about the field at `path` (`""` for none), and its fix (`""` for none).
    pub fn new(
        reason: Reason,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        // The API answers with `reason`; the kind only keeps the error honest on its own.
        let kind = match reason {
            Reason::MissingReference => ErrorKind::MissingReference,
            _ => ErrorKind::Invalid,
        };
        Self {
            reason,
            errors: vec![FieldError::new(kind, path, problem, fix)],
            subject: None,
        }
    }

    /// One problem about no one field, its fix (if any) in `text`.
    pub fn message(reason: Reason, text: impl Into<String>) -> Self {
        Self::new(reason, "", text, "")
    }

    /// The validation errors of the config that `store` makes, where object `id` of `kind`
    /// is the one changed. Each error's `ErrorKind` says what it is.
    pub fn invalid(kind: Kind, id: String, store: Store, errors: Vec<FieldError>) -> Self {
        Self {
            reason: Reason::Invalid,
            errors,
            subject: Some(Subject {
                kind,
                id,
                store: Box::new(store),
            }),
        }
    }
}

/// The problems in the config's naming, one after another (for the log).
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}
