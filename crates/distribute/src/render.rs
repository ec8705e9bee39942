//! Rendering bulletins with minijinja templates loaded at run time.
//!
//! Templates live in `<dir>/<kind>/{subject.txt,body.txt,body.html}.j2` so an operator can
//! edit them without rebuilding; they are re-read when they change. HTML templates are
//! auto-escaped, so advisory text (untrusted) cannot inject markup into an email.

use broadcast_core::Bulletin;
use minijinja::{AutoEscape, Environment, TemplateSource};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A template that is missing, does not compile or fails to render, named with its path.
#[derive(Debug, thiserror::Error)]
#[error("template {template}: {message}")]
pub struct RenderError {
    pub template: String,
    pub message: String,
}

/// Subject and both bodies of one email.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Everything a bulletin email template can use. `B` is the bulletin, or (for the delivery
/// worker, which renders one bulletin thousands of times) the bulletin already made a template
/// value once by [`bulletin_value`], so each email does not copy and convert it again.
#[derive(Clone, Debug, Serialize)]
pub struct EmailContext<B = Bulletin> {
    pub bulletin: B,
    pub organisation: String,
    pub recipient_name: String,
    pub unsubscribe_url: String,
    /// Where the full bulletin can be read (used instead of the body for TLP:RED).
    pub bulletin_url: String,
    /// False for TLP:RED: the email carries a notice and a link, never the content.
    pub body_allowed: bool,
}

/// Everything the daily digest template can use: the bulletins, oldest first.
#[derive(Clone, Debug, Serialize)]
pub struct DigestContext {
    pub organisation: String,
    pub recipient_name: String,
    pub unsubscribe_url: String,
    /// The digest's date, e.g. `2026-11-30`.
    pub date: String,
    /// The highest threat level among the bulletins.
    pub highest: Option<String>,
    pub items: Vec<DigestItem>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DigestItem {
    pub bulletin: Bulletin,
    pub bulletin_url: String,
    /// False for TLP:RED: a notice and a link only.
    pub body_allowed: bool,
}

/// A bulletin as a template value, for [`EmailContext`]: what rendering would make of it each
/// time, made once (template values are shared, not copied, when put in a context).
pub fn bulletin_value(b: &Bulletin) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(b))
}

pub struct Renderer {
    env: Environment<'static>,
    dir: PathBuf,
}

/// How often a loaded template is compared with its file on disk, at most.
pub const TEMPLATE_RECHECK: Duration = Duration::from_secs(1);

/// Like minijinja's `path_loader`, but each template's file is looked at (a `stat`) at most
/// once per `recheck`, not on every render: in a fan-out of 100,000 emails that was three
/// `stat` calls per email, 4 % of the worker's time. An edited template is picked up within
/// `recheck`.
fn path_loader(
    dir: PathBuf,
    recheck: Duration,
) -> impl Fn(&str) -> Result<Option<TemplateSource>, minijinja::Error> + Send + Sync + 'static {
    fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
    move |name| {
        // As minijinja's own loader: nothing outside `dir`, nothing hidden.
        if name.split('/').any(|s| s.starts_with('.') || s.contains('\\')) {
            return Ok(None);
        }
        let path = dir.join(name);
        // Stat before reading, so a change racing with the read is seen by the next check.
        let loaded = stamp(&path);
        match std::fs::read_to_string(&path) {
            Ok(source) => {
                let mut rv = TemplateSource::new(source);
                if let Some(loaded) = loaded {
                    let checked = Mutex::new(Instant::now());
                    rv = rv.with_uptodate_check(move || {
                        let mut checked = checked.lock().expect("template check lock");
                        if checked.elapsed() < recheck {
                            return true;
                        }
                        *checked = Instant::now();
                        stamp(&path) == Some(loaded)
                    });
                }
                Ok(Some(rv))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, "could not read template")
                    .with_source(e))
            }
        }
    }
}

impl Renderer {
    /// Uses the templates under `dir`, each compared with its file at most once per
    /// [`TEMPLATE_RECHECK`]. Fails if the folder does not exist.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Renderer, RenderError> {
        Renderer::from_dir_rechecking(dir, TEMPLATE_RECHECK)
    }

    /// [`Renderer::from_dir`], comparing templates with their files at most once per `recheck`.
    pub fn from_dir_rechecking(dir: impl AsRef<Path>, recheck: Duration) -> Result<Renderer, RenderError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(RenderError {
                template: dir.display().to_string(),
                message: "template folder does not exist".into(),
            });
        }
        let mut env = Environment::new();
        env.set_loader(path_loader(dir.clone(), recheck));
        env.set_auto_escape_callback(|name| {
            if name.contains(".html") { AutoEscape::Html } else { AutoEscape::None }
        });
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("paragraphs", paragraphs);
        // `{% if r is web_url %}`: link only http(s) references.
        env.add_test("web_url", |s: &str| broadcast_core::is_web_url(s));
        Ok(Renderer { env, dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String, RenderError> {
        let err = |e: minijinja::Error| RenderError {
            template: self.dir.join(name).display().to_string(),
            message: broadcast_core::error_chain(&e),
        };
        let tmpl = self.env.get_template(name).map_err(err)?;
        tmpl.render(minijinja::value::Serde(ctx)).map_err(err)
    }

    /// Renders the email for a bulletin of template kind `kind` (e.g. `bulletin`).
    pub fn render_email<B: Serialize>(
        &self,
        kind: &str,
        ctx: &EmailContext<B>,
    ) -> Result<RenderedEmail, RenderError> {
        self.render_kind(kind, ctx)
    }

    /// Renders a daily digest (`digest/` templates).
    pub fn render_digest(&self, ctx: &DigestContext) -> Result<RenderedEmail, RenderError> {
        self.render_kind("digest", ctx)
    }

    fn render_kind(&self, kind: &str, ctx: &impl Serialize) -> Result<RenderedEmail, RenderError> {
        let subject = self.render(&format!("{kind}/subject.txt.j2"), ctx)?;
        // One line, whatever the template or the advisory title contains.
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok(RenderedEmail {
            subject,
            text: self.render(&format!("{kind}/body.txt.j2"), ctx)?,
            html: self.render(&format!("{kind}/body.html.j2"), ctx)?,
        })
    }

    /// Renders a sample bulletin with every template kind the server uses, so a broken
    /// template is reported at start-up rather than at the first publish.
    pub fn self_check(&self) -> Result<(), RenderError> {
        let mut items = Vec::new();
        for red in [false, true] {
            let c = sample_context(red);
            self.render_email("bulletin", &c)?;
            items.push(DigestItem { bulletin: c.bulletin, bulletin_url: c.bulletin_url, body_allowed: !red });
        }
        let c = sample_context(false);
        self.render_digest(&DigestContext {
            organisation: c.organisation,
            recipient_name: c.recipient_name,
            unsubscribe_url: c.unsubscribe_url,
            date: "2026-11-30".into(),
            highest: Some("High".into()),
            items,
        })?;
        Ok(())
    }
}

/// Text made safe to put inside HTML (minijinja's own escaping).
pub fn escape_html(s: &str) -> String {
    minijinja::HtmlEscape(s).to_string()
}

/// A plain-text system notice (not a bulletin) as an email: the HTML part is the same text,
/// escaped, with its line breaks kept.
pub fn notice_email(subject: &str, text: &str) -> RenderedEmail {
    RenderedEmail {
        subject: subject.to_owned(),
        text: text.to_owned(),
        html: format!("<pre style=\"font-family:inherit;white-space:pre-wrap\">{}</pre>", escape_html(text)),
    }
}

/// Splits text on blank lines, for templates that render paragraphs.
fn paragraphs(text: String) -> Vec<String> {
    text.split("\n\n").map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect()
}

/// Undoes the HTML escaping minijinja applies, for tests that look for text in HTML.
#[cfg(test)]
fn unescape_html(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A complete sample context (also used by tests and `broadcast check-config`).
pub fn sample_context(red: bool) -> EmailContext {
    use broadcast_core::*;
    use chrono::TimeZone;
    let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap();
    EmailContext {
        bulletin: Bulletin {
            id: BulletinId::from_suffix("sample"),
            reference: "HCB-2026-0001".into(),
            state: BulletinState::Published,
            content: BulletinContent {
                title: "Sample <b>bulletin</b> & title".into(),
                threat_level: ThreatLevel::High,
                tlp: if red { Tlp::Red } else { Tlp::Clear },
                summary: "Line one.\n\nLine <script>two</script>.".into(),
                affected_products: vec!["Widget 1.0".into()],
                remediation: "Patch.".into(),
                references: vec!["https://example.org/advisory".into()],
                cves: vec!["CVE-2026-0001".into()],
            },
            advisory_ids: vec![],
            author: AnalystId::from_suffix("a"),
            approver: Some(AnalystId::from_suffix("b")),
            review_comment: None,
            created_at: t,
            updated_at: t,
            published_at: Some(t),
            version: 4,
        },
        organisation: "Sample Trust".into(),
        recipient_name: "Sam".into(),
        unsubscribe_url: "https://broadcast.example/unsubscribe?token=x".into(),
        bulletin_url: "https://broadcast.example/bulletins/HCB-2026-0001".into(),
        body_allowed: !red,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_templates() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bulletin-templates")
    }

    #[test]
    fn notices_escape_their_text() {
        let n = notice_email("Endpoint failing", "Last error: HTTP 500: <script>alert(1)</script> & more");
        assert_eq!(n.text, "Last error: HTTP 500: <script>alert(1)</script> & more");
        assert!(!n.html.contains("<script>"), "{}", n.html);
        assert!(n.html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; more"), "{}", n.html);
    }

    #[test]
    fn shipped_templates_render_and_escape() {
        let r = Renderer::from_dir(repo_templates()).unwrap();
        r.self_check().unwrap();
        let e = r.render_email("bulletin", &sample_context(false)).unwrap();
        assert!(e.subject.contains("HCB-2026-0001"), "{}", e.subject);
        assert!(!e.subject.contains('\n'));
        assert!(e.html.contains("Sample &lt;b&gt;bulletin&lt;&#x2f;b&gt; &amp; title"), "{}", e.html);
        assert!(!e.html.contains("<script>"));
        assert!(e.text.contains("Line <script>two</script>."), "text is plain: {}", e.text);
        assert!(unescape_html(&e.html).contains("https://broadcast.example/unsubscribe?token=x"));
        assert!(e.text.contains("CVE-2026-0001"));
    }

    #[test]
    fn red_bulletins_carry_a_notice_not_the_content() {
        let r = Renderer::from_dir(repo_templates()).unwrap();
        let e = r.render_email("bulletin", &sample_context(true)).unwrap();
        for body in [e.text.clone(), unescape_html(&e.html)] {
            assert!(!body.contains("Line one"), "{body}");
            assert!(body.contains("https://broadcast.example/bulletins/HCB-2026-0001"));
        }
    }

    #[test]
    fn broken_templates_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Renderer::from_dir(dir.path().join("missing")).is_err());
        std::fs::create_dir(dir.path().join("bulletin")).unwrap();
        std::fs::write(dir.path().join("bulletin/subject.txt.j2"), "{{ bulletin.reference }").unwrap();
        let r = Renderer::from_dir_rechecking(dir.path(), Duration::ZERO).unwrap();
        let err = r.self_check().unwrap_err();
        assert!(err.template.ends_with("bulletin/subject.txt.j2"), "{err}");
        std::fs::write(dir.path().join("bulletin/subject.txt.j2"), "{{ bulletin.no_such_field }}").unwrap();
        let err = r.self_check().unwrap_err();
        assert!(err.to_string().contains("subject.txt.j2"), "{err}");
    }

    /// An edited template is used once its recheck interval has passed, and not looked at on
    /// disk before then.
    #[test]
    fn edited_templates_are_picked_up_after_the_recheck_interval() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bulletin")).unwrap();
        let subject = dir.path().join("bulletin/subject.txt.j2");
        for (file, text) in [("body.txt.j2", "text"), ("body.html.j2", "<p>html</p>")] {
            std::fs::write(dir.path().join("bulletin").join(file), text).unwrap();
        }
        std::fs::write(&subject, "First {{ bulletin.reference }}").unwrap();
        let every_time = Renderer::from_dir_rechecking(dir.path(), Duration::ZERO).unwrap();
        let hourly = Renderer::from_dir_rechecking(dir.path(), Duration::from_secs(3600)).unwrap();
        let subject_of = |r: &Renderer| r.render_email("bulletin", &sample_context(false)).unwrap().subject;
        assert_eq!(subject_of(&every_time), "First HCB-2026-0001");
        assert_eq!(subject_of(&hourly), "First HCB-2026-0001");
        std::fs::write(&subject, "Edited subject {{ bulletin.reference }}").unwrap();
        assert_eq!(subject_of(&every_time), "Edited subject HCB-2026-0001");
        assert_eq!(subject_of(&hourly), "First HCB-2026-0001", "not looked at again within the hour");
        std::fs::remove_file(&subject).unwrap();
        let err = every_time.render_email("bulletin", &sample_context(false)).unwrap_err();
        assert!(err.template.ends_with("subject.txt.j2"), "a removed template is named: {err}");
    }
}
