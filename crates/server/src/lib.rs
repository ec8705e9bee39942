//! # broadcast-server
//!
//! The only crate that wires the others together: configuration, the `broadcast` command
//! line, the stage runners (collector, triage, delivery workers) and the HTTP API. One
//! binary, several roles, switched in config (`[roles]`).
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery_bench;
pub mod incidents;
pub mod ingest_bench;
pub mod routes;
pub mod seed;
pub mod stages;
pub mod triage_tools;

/// Checks a webhook URL an organisation registers: http(s), a host, no credentials.
/// (Connect-time address checks — the SSRF guard — belong to the delivery engine.)
pub fn validate_webhook_url(raw: &str) -> Result<(), String> {
    let u = url::Url::parse(raw.trim()).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("`{raw}` is not an http(s) URL"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{raw}` has no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("`{raw}` must not carry credentials; the endpoint secret signs each request"));
    }
    if raw.len() > 2048 {
        return Err("webhook URL is longer than 2048 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn webhook_urls() {
        assert!(super::validate_webhook_url("https://soc.trust.nhs.uk/hooks/broadcast").is_ok());
        for bad in [
            "ftp://x.org/a",
            "javascript:alert(1)",
            "https://user:pw@x.org/",
            "not a url",
            "file:///etc/passwd",
        ] {
            let err = super::validate_webhook_url(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
