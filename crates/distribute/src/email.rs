//! Email delivery with lettre: async SMTP over our own connection pool ([`crate::smtp_pool`]),
//! or `.eml` files in a folder, for demos.
//!
//! Every message is multipart text + HTML, with a Message-ID derived from the delivery id
//! (stable across retries, so a duplicate after a crash is recognisable), `List-Id`,
//! `List-Unsubscribe` (the recipient's own signed link) and `List-Unsubscribe-Post`
//! (RFC 8058 one-click).

use crate::render::RenderedEmail;
use crate::smtp_pool::{PoolSettings, Security, SendError, SmtpPool};
use crate::{Channel, DeliveryError, Receipt, excerpt};
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm, DkimSigningKey,
};
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::TlsParameters;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP: only for a relay on the same host or a test server.
    None,
    /// STARTTLS, required (port 587).
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
}

fn default_port() -> u16 {
    587
}
fn default_timeout() -> u64 {
    30
}
fn default_connections() -> usize {
    8
}
fn default_messages_per_connection() -> u32 {
    100
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Most SMTP connections open at once (lettre's pool only caps idle ones).
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Messages sent over one connection before it is closed and a new one opened (relays
    /// often limit messages per session).
    #[serde(default = "default_messages_per_connection")]
    pub max_messages_per_connection: u32,
}

/// Where email goes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// An SMTP relay, set up in `[email.smtp]`.
    Smtp,
    /// Each message written as an `.eml` file into `file_dir` (demo and offline use).
    File,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// `Name <address>` of the sender.
    pub from: String,
    /// The `List-Id` identifier, e.g. `bulletins.example.org`.
    pub list_id: String,
    pub transport: TransportKind,
    #[serde(default)]
    pub smtp: Option<SmtpSettings>,
    #[serde(default)]
    pub file_dir: Option<String>,
    /// Optional DKIM signing of every message.
    #[serde(default)]
    pub dkim: Option<DkimSettings>,
}

/// Which DKIM key type.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    /// rsa-sha256: what every receiver checks. The key is a PKCS#1 PEM.
    Rsa,
    /// ed25519-sha256 (RFC 8463): the key is base64 of the 32-byte seed. Not every receiver
    /// checks it yet.
    Ed25519,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DkimSettings {
    /// The selector: the public key is published at `{selector}._domainkey.{domain}`.
    pub selector: String,
    /// The signing domain (`d=`); defaults to the sender's domain.
    #[serde(default)]
    pub domain: Option<String>,
    pub algorithm: DkimAlgorithm,
    /// The private key itself (prefer `BROADCAST_EMAIL__DKIM__PRIVATE_KEY` in the
    /// environment), or …
    #[serde(default)]
    pub private_key: Option<String>,
    /// … a file holding it.
    #[serde(default)]
    pub private_key_file: Option<String>,
}

/// The headers every signature covers: RFC 8058 needs List-Unsubscribe and
/// List-Unsubscribe-Post signed for one-click unsubscribe to be trusted.
pub const DKIM_HEADERS: [&str; 8] =
    ["From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"];

/// Checks that DKIM settings can sign (the key reads and parses), naming what is wrong.
pub fn check_dkim(d: &DkimSettings) -> Result<(), EmailConfigError> {
    dkim_config(d, "example.org").map(|_| ())
}

fn dkim_config(d: &DkimSettings, sender_domain: &str) -> Result<DkimConfig, EmailConfigError> {
    let bad = |why: String| EmailConfigError { key: "dkim", why };
    let key = match (&d.private_key, &d.private_key_file) {
        (Some(k), None) => k.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read private_key_file `{path}`: {e}")))?,
        _ => return Err(bad("give exactly one of private_key and private_key_file".into())),
    };
    let (algorithm, form) = match d.algorithm {
        DkimAlgorithm::Rsa => (DkimSigningAlgorithm::Rsa, "a PKCS#1 PEM RSA key"),
        DkimAlgorithm::Ed25519 => (DkimSigningAlgorithm::Ed25519, "base64 of a 32-byte ed25519 seed"),
    };
    let key = DkimSigningKey::new(key.trim(), algorithm)
        .map_err(|e| bad(format!("the private key is not {form}: {e}")))?;
    if d.selector.trim().is_empty() {
        return Err(bad("selector must not be empty".into()));
    }
    Ok(DkimConfig::new(
        d.selector.trim().to_owned(),
        d.domain.clone().unwrap_or_else(|| sender_domain.to_owned()),
        key,
        DKIM_HEADERS.iter().map(|h| HeaderName::new_from_ascii_str(h)).collect(),
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    ))
}

/// A configuration that cannot send mail, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("email.{key}: {why}")]
pub struct EmailConfigError {
    pub key: &'static str,
    pub why: String,
}

/// One email to one recipient.
#[derive(Clone, Debug)]
pub struct EmailMessage {
    /// The delivery id; the Message-ID is built from it.
    pub delivery_id: String,
    pub to: String,
    pub to_name: String,
    pub rendered: RenderedEmail,
    pub unsubscribe_url: String,
}

enum Transport {
    /// The pool caps its own connections (`max_connections`).
    Smtp(Box<SmtpPool>),
    /// At most this many files written at once.
    File(AsyncFileTransport<Tokio1Executor>, Semaphore),
}

pub struct EmailChannel {
    transport: Transport,
    from: Mailbox,
    list_id: String,
    domain: String,
    dkim: Option<DkimConfig>,
}

macro_rules! raw_header {
    ($ty:ident, $name:literal) => {
        #[derive(Clone, Debug)]
        struct $ty(String);
        impl Header for $ty {
            fn name() -> HeaderName {
                HeaderName::new_from_ascii_str($name)
            }
            fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                Ok($ty(s.to_owned()))
            }
            fn display(&self) -> HeaderValue {
                HeaderValue::new(Self::name(), self.0.clone())
            }
        }
    };
}
raw_header!(ListId, "List-Id");
raw_header!(ListUnsubscribe, "List-Unsubscribe");
raw_header!(ListUnsubscribePost, "List-Unsubscribe-Post");
raw_header!(AutoSubmitted, "Auto-Submitted");

impl EmailChannel {
    pub fn new(s: &EmailSettings) -> Result<EmailChannel, EmailConfigError> {
        let from: Mailbox = s.from.parse().map_err(|e| EmailConfigError {
            key: "from",
            why: format!("`{}` is not a mailbox: {e}", s.from),
        })?;
        let domain = from.email.domain().to_owned();
        if s.list_id.trim().is_empty() || s.list_id.contains(['<', '>', ' ']) {
            return Err(EmailConfigError {
                key: "list_id",
                why: format!("`{}` must be a bare identifier like bulletins.example.org", s.list_id),
            });
        }
        let transport = match s.transport {
            TransportKind::File => {
                let dir = s.file_dir.as_deref().ok_or_else(|| EmailConfigError {
                    key: "file_dir",
                    why: "needed when transport = \"file\"".into(),
                })?;
                std::fs::create_dir_all(dir).map_err(|e| EmailConfigError {
                    key: "dir",
                    why: format!("cannot create `{dir}`: {e}"),
                })?;
                Transport::File(AsyncFileTransport::new(dir), Semaphore::new(4))
            }
            TransportKind::Smtp => {
                let smtp = s.smtp.as_ref().ok_or_else(|| EmailConfigError {
                    key: "smtp",
                    why: "an [email.smtp] section is needed when transport = \"smtp\"".into(),
                })?;
                let security = match smtp.tls {
                    SmtpTls::None => Security::None,
                    SmtpTls::Starttls => {
                        Security::Starttls(TlsParameters::new(smtp.host.clone()).map_err(|e| {
                            EmailConfigError {
                                key: "smtp.host",
                                why: format!("TLS set-up for `{}` failed: {e}", smtp.host),
                            }
                        })?)
                    }
                    SmtpTls::Tls => {
                        let roots =
                            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                        let config = rustls::ClientConfig::builder()
                            .with_root_certificates(roots)
                            .with_no_client_auth();
                        Security::Wrapper(Arc::new(config))
                    }
                };
                let credentials = match (&smtp.username, &smtp.password) {
                    (Some(u), Some(p)) => Some(Credentials::new(u.clone(), p.clone())),
                    (None, None) => None,
                    _ => {
                        return Err(EmailConfigError {
                            key: "smtp.username",
                            why: "username and password must be given together".into(),
                        });
                    }
                };
                if smtp.max_connections == 0 {
                    return Err(EmailConfigError {
                        key: "smtp.max_connections",
                        why: "must be at least 1".into(),
                    });
                }
                if smtp.max_messages_per_connection == 0 {
                    return Err(EmailConfigError {
                        key: "smtp.max_messages_per_connection",
                        why: "must be at least 1".into(),
                    });
                }
                let pool = SmtpPool::new(PoolSettings {
                    host: smtp.host.clone(),
                    port: smtp.port,
                    security,
                    credentials,
                    timeout: Duration::from_secs(smtp.timeout_secs),
                    max_connections: smtp.max_connections,
                    max_messages_per_connection: smtp.max_messages_per_connection,
                });
                Transport::Smtp(Box::new(pool))
            }
        };
        let dkim = s.dkim.as_ref().map(|d| dkim_config(d, &domain)).transpose()?;
        Ok(EmailChannel { transport, from, list_id: s.list_id.trim().to_owned(), domain, dkim })
    }

    /// Builds the message exactly as it will be sent.
    pub fn build(&self, m: &EmailMessage) -> Result<Message, DeliveryError> {
        let to_addr: lettre::Address = m
            .to
            .parse()
            .map_err(|e| DeliveryError::Permanent(format!("recipient `{}` is not an address: {e}", m.to)))?;
        // Given, so lettre need not parse it back out of the From and To headers.
        let envelope = lettre::address::Envelope::new(Some(self.from.email.clone()), vec![to_addr.clone()])
            .map_err(|e| DeliveryError::Permanent(format!("cannot address the message: {e}")))?;
        let to = Mailbox::new((!m.to_name.is_empty()).then(|| m.to_name.clone()), to_addr);
        Message::builder()
            .envelope(envelope)
            .from(self.from.clone())
            .to(to)
            .subject(m.rendered.subject.clone())
            .message_id(Some(format!("<{}@{}>", m.delivery_id, self.domain)))
            .header(ListId(format!("<{}>", self.list_id)))
            .header(ListUnsubscribe(format!("<{}>", m.unsubscribe_url)))
            .header(ListUnsubscribePost("List-Unsubscribe=One-Click".into()))
            .header(AutoSubmitted("auto-generated".into()))
            .multipart(MultiPart::alternative_plain_html(m.rendered.text.clone(), m.rendered.html.clone()))
            .map(|mut msg| {
                if let Some(dkim) = &self.dkim {
                    msg.sign(dkim);
                }
                msg
            })
            .map_err(|e| DeliveryError::Permanent(format!("cannot build message: {e}")))
    }
}

impl Channel for EmailChannel {
    type Message = EmailMessage;

    async fn deliver(&self, m: &EmailMessage) -> Result<Receipt, DeliveryError> {
        let msg = self.build(m)?;
        match &self.transport {
            Transport::Smtp(pool) => match pool.send(msg.envelope(), &msg.formatted()).await {
                Ok(resp) => Ok(Receipt {
                    detail: excerpt(
                        &format!("{} {}", resp.code(), resp.message().collect::<Vec<_>>().join(" ")),
                        300,
                    ),
                }),
                // Permanent replies start with their code ("550 …"), so they can be counted as
                // hard bounces.
                Err(SendError::Smtp(e)) if e.is_permanent() => {
                    let code = e.status().map(|c| c.to_string()).unwrap_or_else(|| "5xx".into());
                    Err(DeliveryError::Permanent(excerpt(&format!("{code} {e}"), 500)))
                }
                Err(e) => Err(DeliveryError::Transient(excerpt(&broadcast_core::error_chain(&e), 500))),
            },
            Transport::File(t, limit) => {
                let _permit = limit.acquire().await.expect("semaphore never closed");
                match t.send(msg).await {
                    Ok(id) => Ok(Receipt { detail: format!("written as {id}.eml") }),
                    Err(e) => Err(DeliveryError::Transient(format!("cannot write message file: {e}"))),
                }
            }
        }
    }
}
