//! `[agent]`: status file, probe concurrency, this host's PoP and position, RTT smoothing.

use super::FieldErrors;
use std::path::PathBuf;

use super::{pop_ok, position};
use crate::config::{
    defaults::{DEFAULT_PROBE_CONCURRENCY, DEFAULT_RTT_SMOOTHING, DEFAULT_STATUS_FILE},
    raw::RawAgent,
    types::Agent,
};

pub(super) fn validate(raw: &RawAgent, errors: &mut FieldErrors) -> Agent {
    let status_file = raw
        .status_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATUS_FILE));
    if !status_file.is_absolute() {
        errors.invalid(
            "agent.status_file",
            format!("\"{}\" is relative", status_file.display()),
            format!("use an absolute path such as \"{DEFAULT_STATUS_FILE}\""),
        );
    }
    let probe_concurrency = raw.probe_concurrency.unwrap_or(DEFAULT_PROBE_CONCURRENCY);
    if !(1..=65_536).contains(&probe_concurrency) {
        errors.invalid(
            "agent.probe_concurrency",
            format!("{probe_concurrency} is out of range"),
            "use 1-65536",
        );
    }
    if let Some(pop) = &raw.pop {
        pop_ok(pop, "agent.pop", errors);
    }
    let position = position(raw.latitude, raw.longitude, "agent", errors);
    let rtt_smoothing = raw.rtt_smoothing.unwrap_or(DEFAULT_RTT_SMOOTHING);
    if !(rtt_smoothing > 0.0 && rtt_smoothing <= 1.0) {
        errors.invalid(
            "agent.rtt_smoothing",
            format!("{rtt_smoothing} is out of range"),
            "use a number above 0 and at most 1 (the weight of each new RTT sample; 1 = no smoothing)",
        );
    }
    Agent {
        status_file,
        probe_concurrency,
        pop: raw.pop.clone(),
        position,
        rtt_smoothing,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn status_file_absolute() {
        let text = GOOD.replacen(
            "[[pools]]",
            "[agent]\nstatus_file = \"status.json\"\n\n[[pools]]",
            1,
        );
        assert_one(&errors_of(&text), "agent.status_file");
    }

    #[test]
    fn rtt_smoothing_in_range() {
        assert_one(&agent_with("rtt_smoothing = 0.0"), "agent.rtt_smoothing");
        assert_one(&agent_with("rtt_smoothing = 1.5"), "agent.rtt_smoothing");
    }
}
