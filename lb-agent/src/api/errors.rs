//! The API's errors: Cloudflare's error codes, the HTTP status of each, and a refused
//! change (`refusal::Refusal`) in the API's terms. The only place that knows HTTP statuses
//! and error codes; the store and the main loop return reasons, validation returns errors
//! of a kind (`config::ErrorKind`).

use crate::{
    config::{ErrorKind, FieldError},
    refusal::{Reason, Refusal},
    store::{relabel, Store},
};

/// Error codes in the API's `errors[].code`, in Cloudflare's envelope.
pub mod code {
    /// The body is not JSON, not an object, has a value of the wrong type or an unknown field.
    pub const BAD_BODY: u32 = 1000;
    /// A value is out of range or inconsistent (the config validation's rules).
    pub const INVALID: u32 = 1001;
    /// The object refers to a monitor or pool id that does not exist.
    pub const MISSING_REFERENCE: u32 = 1002;
    /// The object is still used by another (a monitor by a pool, a pool by a load balancer).
    pub const IN_USE: u32 = 1003;
    /// No object has this id.
    pub const NOT_FOUND: u32 = 1004;
    /// The change was valid but could not be saved or applied; nothing changed.
    pub const INTERNAL: u32 = 1100;
    /// No such route (Cloudflare's 7003) or method (7000).
    pub const NO_ROUTE: u32 = 7003;
    pub const NO_METHOD: u32 = 7000;
    /// No credentials (Cloudflare's 10000, "Authentication error").
    pub const AUTH_MISSING: u32 = 10_000;
    /// Credentials that no configured token or key matches (Cloudflare's 9109).
    pub const AUTH_INVALID: u32 = 9109;
}

/// A refused request: the HTTP status and the envelope's errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub errors: Vec<(u32, String)>,
}

impl Rejection {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            errors: vec![(code, message.into())],
        }
    }
}

/// The HTTP status and error code of each reason for refusing a change.
pub fn status_and_code(reason: Reason) -> (u16, u32) {
    match reason {
        Reason::BadBody => (400, code::BAD_BODY),
        Reason::Invalid => (400, code::INVALID),
        Reason::MissingReference => (400, code::MISSING_REFERENCE),
        Reason::InUse => (400, code::IN_USE),
        Reason::NotFound => (404, code::NOT_FOUND),
        Reason::Internal => (500, code::INTERNAL),
    }
}

/// The HTTP status and error code of each kind of validation error.
pub fn kind_status_and_code(kind: ErrorKind) -> (u16, u32) {
    match kind {
        ErrorKind::Invalid => (400, code::INVALID),
        ErrorKind::MissingReference => (400, code::MISSING_REFERENCE),
        // Cloudflare has no code of its own for a duplicate name or address: it is a value
        // the rules refuse, as it has always been answered here.
        ErrorKind::Conflict => (400, code::INVALID),
    }
}

/// A refusal with its reason's status and code; validation errors (a refusal with a
/// subject) each with their kind's code instead, and the highest of their statuses.
impl From<Refusal> for Rejection {
    fn from(r: Refusal) -> Self {
        let by_reason = status_and_code(r.reason);
        let errors: Vec<(u16, u32, String)> = r
            .errors
            .iter()
            .map(|e| match &r.subject {
                Some(s) => {
                    let (status, code) = kind_status_and_code(e.kind);
                    (status, code, api_message(&s.store, s.kind, &s.id, e))
                }
                None => (by_reason.0, by_reason.1, e.to_string()),
            })
            .collect();
        Self {
            status: errors.iter().map(|e| e.0).max().unwrap_or(by_reason.0),
            errors: errors.into_iter().map(|(_, c, m)| (c, m)).collect(),
        }
    }
}

/// A validation error for an API caller who sent object `id` of `kind`, which `store`
/// holds: a field of that object is a field of the body (`origins[1].weight`, not
/// `pools[3].origins[1].weight`), and other objects are named instead of numbered
/// (`load balancer "www" (<id>)`).
fn api_message(store: &Store, kind: crate::store::Kind, id: &str, e: &FieldError) -> String {
    let own = store
        .index(kind, id)
        .map(|i| format!("{}[{i}]", kind.list()));
    let path = match &own {
        Some(own) if e.path == *own => "",
        Some(own) => e
            .path
            .strip_prefix(own.as_str())
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(&e.path),
        None => &e.path,
    };
    let text = if path.is_empty() {
        e.text()
    } else {
        format!("{path}: {}", e.text())
    };
    relabel(&text, |k, i, _| store.label(k, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::RawConfig,
        store::{Kind, Store},
    };

    #[test]
    fn validation_messages_name_fields_of_the_body_and_other_objects_by_name() {
        let raw = RawConfig::parse(
            "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n\n[[pools]]\nname = \"web\"\norigins = [{ name = \"a\", address = \"10.0.2.2\" }, { name = \"b\", address = \"10.0.3.2\" }]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n",
            std::path::Path::new("t.toml"),
        )
        .expect("parses");
        let mut s = Store::default();
        s.merge_file(&raw, "2026-11-25T20:00:00.000000Z");
        let web = s.pools[0].id.clone();
        let r: Rejection = Refusal::invalid(
            Kind::Pool,
            web,
            s,
            vec![
                FieldError::new(
                    ErrorKind::Invalid,
                    "pools[0].origins[1].weight",
                    "2 is out of range",
                    "use a number between 0 and 1",
                ),
                FieldError::new(
                    ErrorKind::Conflict,
                    "load_balancers[0]",
                    "10.0.0.10:80 is already the VIP of load_balancers[0]",
                    "",
                ),
                FieldError::new(ErrorKind::Invalid, "pools[0]", "no origin", ""),
            ],
        )
        .into();
        assert_eq!(r.status, 400);
        assert_eq!(
            r.errors[0],
            (
                code::INVALID,
                "origins[1].weight: 2 is out of range; use a number between 0 and 1".into()
            )
        );
        assert!(
            r.errors[1].1.starts_with("load balancer \"www\" ("),
            "{}",
            r.errors[1].1
        );
        assert_eq!(r.errors[2].1, "no origin");
    }

    /// A config with pool `web` (origin a) and load balancer `www` on 10.0.0.10:80.
    const GOOD: &str = "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n\n[[pools]]\nname = \"web\"\norigins = [{ name = \"a\", address = \"10.0.2.2\" }]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n";

    /// The validation errors of `bad`, and the API's answer to a change of the `kind` object
    /// `id_of` names in the store of `GOOD` that would make the config `bad`.
    fn refused_change(
        bad: &str,
        kind: Kind,
        id_of: impl Fn(&Store) -> String,
    ) -> (Vec<FieldError>, Rejection) {
        let parse =
            |text: &str| RawConfig::parse(text, std::path::Path::new("t.toml")).expect("parses");
        let mut s = Store::default();
        s.merge_file(&parse(GOOD), "2026-11-25T20:00:00.000000Z");
        let id = id_of(&s);
        let errors = crate::config::validate(parse(bad)).expect_err("invalid");
        let r = Refusal::invalid(kind, id, s, errors.clone()).into();
        (errors, r)
    }

    #[test]
    fn an_unknown_protocol_is_refused_naming_the_field_of_the_body() {
        let bad = GOOD.replace("port = 80\n", "port = 80\nprotocol = \"quic\"\n");
        let (_, r) = refused_change(&bad, Kind::LoadBalancer, |s| s.load_balancers[0].id.clone());
        assert_eq!(r.status, 400);
        assert_eq!(
            r.errors,
            [(
                code::INVALID,
                "protocol: unknown protocol \"quic\"; use \"tcp\" (the default) or \"udp\" (lowercase)"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn each_reason_has_its_status_and_code() {
        for (reason, want) in [
            (Reason::BadBody, (400, code::BAD_BODY)),
            (Reason::Invalid, (400, code::INVALID)),
            (Reason::MissingReference, (400, code::MISSING_REFERENCE)),
            (Reason::InUse, (400, code::IN_USE)),
            (Reason::NotFound, (404, code::NOT_FOUND)),
            (Reason::Internal, (500, code::INTERNAL)),
        ] {
            assert_eq!(status_and_code(reason), want, "{reason:?}");
        }
        let r: Rejection = Refusal::new(Reason::BadBody, "id", "differs", "send the same").into();
        assert_eq!(
            r,
            Rejection::new(400, code::BAD_BODY, "id: differs; send the same")
        );
    }

    #[test]
    fn each_error_kind_has_its_status_and_code() {
        for (kind, want) in [
            (ErrorKind::Invalid, (400, code::INVALID)),
            (ErrorKind::MissingReference, (400, code::MISSING_REFERENCE)),
            (ErrorKind::Conflict, (400, code::INVALID)),
        ] {
            assert_eq!(kind_status_and_code(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn a_missing_monitor_in_validation_is_a_missing_reference() {
        let bad = GOOD.replace("name = \"web\"\n", "name = \"web\"\nmonitor = \"gone\"\n");
        let (errors, r) = refused_change(&bad, Kind::Pool, |s| s.pools[0].id.clone());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].kind, ErrorKind::MissingReference);
        assert_eq!(r.status, 400);
        assert_eq!(
            r.errors,
            [(
                code::MISSING_REFERENCE,
                "monitor: no monitor is named \"gone\"; define it under [[monitors]] or fix the name"
                    .to_owned()
            )]
        );
    }
}
