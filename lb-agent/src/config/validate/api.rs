//! `[api]`: where the HTTP API listens, its credentials, its state file.

use super::FieldErrors;
use std::path::PathBuf;

use crate::config::{
    defaults::{DEFAULT_API_LISTEN, DEFAULT_STATE_FILE},
    raw::RawApi,
    types::Api,
};

pub(super) fn validate(raw: &RawApi, errors: &mut FieldErrors) -> Api {
    let listen = match raw.listen.as_deref().unwrap_or(DEFAULT_API_LISTEN) {
        "off" => None,
        s => match s.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.invalid(
                    "api.listen",
                    format!("\"{s}\" is not address:port"),
                    format!("write e.g. \"{DEFAULT_API_LISTEN}\", or \"off\" to turn the API off"),
                );
                None
            }
        },
    };
    for (i, t) in raw.tokens.iter().enumerate() {
        if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.invalid(
                format!("api.tokens[{i}]"),
                "too short or contains spaces",
                "use at least 16 printable characters, e.g. from `openssl rand -hex 20`",
            );
        }
    }
    for (i, k) in raw.keys.iter().enumerate() {
        if !k.email.contains('@') {
            errors.invalid(
                format!("api.keys[{i}].email"),
                format!("\"{}\" is not an email address", k.email),
                "give the address callers send in X-Auth-Email",
            );
        }
        if k.key.len() < 16 || k.key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.invalid(
                format!("api.keys[{i}].key"),
                "too short or contains spaces",
                "use at least 16 printable characters",
            );
        }
    }
    let state_file = raw
        .state_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE));
    if !state_file.is_absolute() {
        errors.invalid(
            "api.state_file",
            format!("\"{}\" is relative", state_file.display()),
            format!("use an absolute path such as \"{DEFAULT_STATE_FILE}\""),
        );
    }
    Api {
        listen,
        tokens: raw.tokens.clone(),
        keys: raw
            .keys
            .iter()
            .map(|k| (k.email.clone(), k.key.clone()))
            .collect(),
        state_file,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::{Config, DEFAULT_API_LISTEN, DEFAULT_STATE_FILE};
    use std::path::Path;
    use std::path::PathBuf;

    #[test]
    fn api_defaults() {
        let c = Config::parse(GOOD, Path::new("t.toml")).expect("valid");
        assert_eq!(
            c.api.listen,
            Some(DEFAULT_API_LISTEN.parse().expect("addr"))
        );
        assert_eq!(c.api.state_file, PathBuf::from(DEFAULT_STATE_FILE));
        assert!(c.api.tokens.is_empty() && c.api.keys.is_empty());
        let c = Config::parse(
            &format!("{GOOD}\n[api]\nlisten = \"off\"\n"),
            Path::new("t.toml"),
        )
        .expect("valid");
        assert_eq!(c.api.listen, None, "off turns the API off");
    }

    #[test]
    fn api_listen_must_be_address_and_port() {
        assert_one(&errors_plus("[api]\nlisten = \"localhost\""), "api.listen");
    }

    #[test]
    fn api_tokens_must_be_long_and_printable() {
        assert_one(&errors_plus("[api]\ntokens = [\"short\"]"), "api.tokens[0]");
        assert_one(
            &errors_plus("[api]\ntokens = [\"has a space in it, 12345678\"]"),
            "api.tokens[0]",
        );
    }

    #[test]
    fn api_keys_need_an_email_and_a_long_key() {
        assert_one(
            &errors_plus("[[api.keys]]\nemail = \"ops\"\nkey = \"0123456789abcdef0\""),
            "api.keys[0].email",
        );
        assert_one(
            &errors_plus("[[api.keys]]\nemail = \"ops@example.com\"\nkey = \"short\""),
            "api.keys[0].key",
        );
    }

    #[test]
    fn api_state_file_must_be_absolute() {
        assert_one(
            &errors_plus("[api]\nstate_file = \"state.json\""),
            "api.state_file",
        );
    }
}
