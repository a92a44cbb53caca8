//! Email: a [`Mailer`] trait, an SMTP implementation over lettre (feature `smtp`), and
//! [`Templates`] (minijinja) with the built-in messages — invitation, trial ending,
//! payment failed, tenant suspended, export ready.
//!
//! Sends are outbox jobs: [`queue`] publishes a [`SendEmail`] in the caller's transaction,
//! so an email is never sent for a rolled-back change, and a worker running
//! [`MailHandler`] renders and sends it with retries — never lost.
//!
//! Values that must not sit in clear in the job table — an invitation link with its
//! token, a sign-in link — go through [`queue_sealed`]: encrypted with a saas-core
//! [`Keyring`] and bound to the tenant, opened by the worker
//! ([`MailHandler::unseal_with`]) just before rendering.

use std::future::Future;
use std::sync::Arc;

use saas_core::TenantId;
use saas_core::crypto::{Aad, Keyring};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;

use crate::event::{Event, Publish, publish_with};
use crate::job::{Handler, JobContext, JobError, JobId};

/// The queue email jobs go to.
pub const QUEUE: &str = "email";

/// A message ready to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// Recipients.
    pub to: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body, sent as the alternative to the text.
    pub html: Option<String>,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// The server refused for good (5xx), or the message is malformed: do not retry.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// Try again (4xx, connection trouble).
    #[error("transient failure: {0}")]
    Transient(String),
    /// No template of that name, or it failed to render.
    #[error("template {name:?}: {reason}")]
    Template {
        /// The template.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Sends email.
pub trait Mailer: Send + Sync + 'static {
    /// Sends one message.
    fn send(&self, email: &Email) -> impl Future<Output = Result<(), MailError>> + Send;
}

/// The email job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendEmail {
    /// The template (`invitation`, `trial_ending`, …, or one the application added).
    pub template: String,
    /// Recipients.
    pub to: Vec<String>,
    /// The template's variables.
    pub context: Value,
}

impl Event for SendEmail {
    const KIND: &'static str = "email.send";
    const QUEUE: &'static str = QUEUE;
}

/// Queues `template` rendered with `context` to `to`, in the caller's transaction.
pub async fn queue(
    tx: &mut PgConnection,
    template: &str,
    to: &[&str],
    context: Value,
) -> Result<JobId, crate::error::PublishError> {
    if to.is_empty() || to.iter().any(|a| !a.contains('@') || a.len() > 320) {
        return Err(crate::error::PublishError::Invalid(
            "recipients must be 1 or more email addresses",
        ));
    }
    let job = SendEmail {
        template: template.to_owned(),
        to: to.iter().map(|s| (*s).to_owned()).collect(),
        context,
    };
    publish_with(tx, &job, &Publish::new().max_attempts(12))
        .await?
        .ok_or(crate::error::PublishError::Invalid("not inserted"))
}

/// The context key under which [`queue_sealed`] puts its ciphertexts.
pub const SEALED: &str = "sealed";

/// What a sealed value is bound to: its tenant and its name (a ciphertext copied into
/// another tenant's job, or under another name, does not open).
fn sealed_aad(tenant: TenantId, name: &str) -> Aad {
    Aad::new(tenant, "saas.email_job.sealed").row(name)
}

/// [`queue`], with `sealed` values (name, value) encrypted by `keyring` for `tenant`: the
/// job row holds only ciphertext under the context key [`SEALED`]. Publish it in
/// `tenant`'s transaction; a worker whose [`MailHandler`] has the same keyring
/// ([`MailHandler::unseal_with`]) puts the values back into the context before
/// rendering. `context` must be a JSON object.
pub async fn queue_sealed(
    tx: &mut PgConnection,
    tenant: TenantId,
    keyring: &Keyring,
    template: &str,
    to: &[&str],
    mut context: Value,
    sealed: &[(&str, &str)],
) -> Result<JobId, crate::error::PublishError> {
    let mut ciphertexts = serde_json::Map::new();
    for (name, value) in sealed {
        let ct = keyring
            .encrypt(value.as_bytes(), &sealed_aad(tenant, name))
            .map_err(|_| crate::error::PublishError::Invalid("a value could not be sealed"))?;
        ciphertexts.insert((*name).to_owned(), Value::String(ct));
    }
    let Some(map) = context.as_object_mut() else {
        return Err(crate::error::PublishError::Invalid(
            "the e-mail context must be a JSON object",
        ));
    };
    map.insert(SEALED.to_owned(), Value::Object(ciphertexts));
    queue(tx, template, to, context).await
}

const BUILT_IN: &[(&str, &str, &str, &str)] = &[
    (
        "invitation",
        "{{ inviter }} invited you to {{ tenant }}",
        "Hello,\n\n{{ inviter }} invited you to join {{ tenant }} as {{ role }}.\n\nAccept: {{ link }}\n\nThe link works until {{ expires }}.\n",
        "<p>Hello,</p><p>{{ inviter }} invited you to join <strong>{{ tenant }}</strong> as {{ role }}.</p><p><a href=\"{{ link }}\">Accept the invitation</a></p><p>The link works until {{ expires }}.</p>",
    ),
    (
        "trial_ending",
        "Your {{ tenant }} trial ends {{ ends }}",
        "Hello,\n\nThe trial of {{ tenant }} ends on {{ ends }}. Choose a plan to keep your data and your team's access: {{ link }}\n",
        "<p>Hello,</p><p>The trial of <strong>{{ tenant }}</strong> ends on {{ ends }}.</p><p><a href=\"{{ link }}\">Choose a plan</a> to keep your data and your team's access.</p>",
    ),
    (
        "payment_failed",
        "Payment for {{ tenant }} failed",
        "Hello,\n\nWe could not charge {{ amount }} for {{ tenant }}{% if reason %} ({{ reason }}){% endif %}. Please update the payment method: {{ link }}\n",
        "<p>Hello,</p><p>We could not charge {{ amount }} for <strong>{{ tenant }}</strong>{% if reason %} ({{ reason }}){% endif %}.</p><p><a href=\"{{ link }}\">Update the payment method</a></p>",
    ),
    (
        "tenant_suspended",
        "{{ tenant }} is suspended",
        "Hello,\n\n{{ tenant }} was suspended: {{ reason }}. Your data is kept until {{ retained_until }}. {{ link }}\n",
        "<p>Hello,</p><p><strong>{{ tenant }}</strong> was suspended: {{ reason }}.</p><p>Your data is kept until {{ retained_until }}. <a href=\"{{ link }}\">Details</a></p>",
    ),
    (
        "export_ready",
        "Your {{ tenant }} export is ready",
        "Hello,\n\nThe data export of {{ tenant }} is ready: {{ link }}\n\nThe link works until {{ expires }}.\n",
        "<p>Hello,</p><p>The data export of <strong>{{ tenant }}</strong> is ready.</p><p><a href=\"{{ link }}\">Download it</a> before {{ expires }}.</p>",
    ),
];

/// Email templates: a subject, a text body and an HTML body per name. Variables missing
/// from the context are errors (strict), and HTML bodies are escaped.
#[derive(Debug, Clone)]
pub struct Templates {
    env: Arc<minijinja::Environment<'static>>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::built_in()
    }
}

impl Templates {
    /// The built-in templates.
    pub fn built_in() -> Self {
        let mut t = Templates { env: Arc::new(env()) };
        for (name, subject, text, html) in BUILT_IN {
            // The built-ins are known to parse (tested).
            let _ = t.add(name, subject, text, html);
        }
        t
    }

    /// Adds or replaces a template.
    pub fn add(&mut self, name: &str, subject: &str, text: &str, html: &str) -> Result<(), MailError> {
        let env = Arc::make_mut(&mut self.env);
        let err = |e: minijinja::Error| MailError::Template {
            name: name.to_owned(),
            reason: e.to_string(),
        };
        env.add_template_owned(format!("{name}.subject"), subject.to_owned())
            .map_err(err)?;
        env.add_template_owned(format!("{name}.txt"), text.to_owned())
            .map_err(err)?;
        env.add_template_owned(format!("{name}.html"), html.to_owned())
            .map_err(err)?;
        Ok(())
    }

    /// Renders `name` for `to`.
    pub fn render(&self, name: &str, to: &[String], context: &Value) -> Result<Email, MailError> {
        let err = |e: minijinja::Error| MailError::Template {
            name: name.to_owned(),
            reason: e.to_string(),
        };
        let get = |suffix: &str| self.env.get_template(&format!("{name}.{suffix}")).map_err(err);
        Ok(Email {
            to: to.to_vec(),
            subject: get("subject")?.render(context).map_err(err)?.trim().to_owned(),
            text: get("txt")?.render(context).map_err(err)?,
            html: Some(get("html")?.render(context).map_err(err)?),
        })
    }
}

fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    env
}

/// Runs [`SendEmail`] jobs: renders and sends; permanent refusals are dead-lettered at
/// once, transient ones retried.
pub struct MailHandler<M> {
    mailer: Arc<M>,
    templates: Templates,
    keyring: Option<Arc<Keyring>>,
}

impl<M: Mailer> MailHandler<M> {
    /// Sends through `mailer` with `templates`.
    pub fn new(mailer: M, templates: Templates) -> Self {
        MailHandler {
            mailer: Arc::new(mailer),
            templates,
            keyring: None,
        }
    }

    /// Opens the values of [`queue_sealed`] with `keyring` (without it, a sealed e-mail
    /// is dead-lettered).
    pub fn unseal_with(mut self, keyring: Arc<Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The job's context with its sealed values opened.
    fn unseal(&self, ctx: &JobContext, mut context: Value) -> Result<Value, JobError> {
        let Some(Value::Object(sealed)) = context.as_object_mut().and_then(|o| o.remove(SEALED)) else {
            return Ok(context);
        };
        let keyring = self
            .keyring
            .as_ref()
            .ok_or_else(|| JobError::fatal("a sealed e-mail needs MailHandler::unseal_with"))?;
        let tenant = ctx
            .tenant()
            .ok_or_else(|| JobError::fatal("a sealed e-mail must be published in its tenant's transaction"))?;
        for (name, ct) in sealed {
            let ct = ct
                .as_str()
                .ok_or_else(|| JobError::fatal(format!("sealed value {name:?} is not a string")))?;
            let value = keyring
                .decrypt_string(ct, &sealed_aad(tenant, &name))
                .map_err(|e| JobError::fatal(format!("sealed value {name:?}: {e}")))?;
            if let Some(map) = context.as_object_mut() {
                map.insert(name, Value::String(value.into_inner()));
            }
        }
        Ok(context)
    }
}

impl<M: Mailer> Handler<SendEmail> for MailHandler<M> {
    async fn handle(&self, ctx: JobContext, job: SendEmail) -> Result<(), JobError> {
        let context = self.unseal(&ctx, job.context)?;
        let email = self
            .templates
            .render(&job.template, &job.to, &context)
            .map_err(JobError::fatal)?;
        match self.mailer.send(&email).await {
            Ok(()) => Ok(()),
            Err(e @ (MailError::Permanent(_) | MailError::Template { .. })) => Err(JobError::fatal(e)),
            Err(e @ MailError::Transient(_)) => Err(JobError::retry(e)),
        }
    }
}

#[cfg(feature = "smtp")]
pub use smtp::SmtpMailer;

#[cfg(feature = "smtp")]
mod smtp {
    use lettre::message::{Mailbox, MultiPart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    use super::{Email, MailError, Mailer};

    /// SMTP over lettre: pooled connections, TLS (implicit or STARTTLS) with the
    /// platform's certificate verifier.
    #[derive(Clone)]
    pub struct SmtpMailer {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    }

    impl std::fmt::Debug for SmtpMailer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SmtpMailer")
                .field("from", &self.from.to_string())
                .finish_non_exhaustive()
        }
    }

    fn mailbox(from: &str) -> Result<Mailbox, MailError> {
        from.parse()
            .map_err(|e| MailError::Permanent(format!("sender {from:?}: {e}")))
    }

    impl SmtpMailer {
        /// Implicit TLS (port 465) to `host`, authenticated.
        pub fn relay(host: &str, username: &str, password: &str, from: &str) -> Result<Self, MailError> {
            Self::authenticated(
                AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                username,
                password,
                from,
            )
        }

        /// STARTTLS (port 587) to `host`, authenticated.
        pub fn starttls(host: &str, username: &str, password: &str, from: &str) -> Result<Self, MailError> {
            Self::authenticated(
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
                username,
                password,
                from,
            )
        }

        fn authenticated(
            builder: Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, lettre::transport::smtp::Error>,
            username: &str,
            password: &str,
            from: &str,
        ) -> Result<Self, MailError> {
            let transport = builder
                .map_err(|e| MailError::Permanent(e.to_string()))?
                .credentials(Credentials::new(username.to_owned(), password.to_owned()))
                .build();
            Ok(SmtpMailer {
                transport,
                from: mailbox(from)?,
            })
        }

        /// Plain SMTP without TLS or authentication — only for a local relay or a test sink.
        pub fn unencrypted(host: &str, port: u16, from: &str) -> Result<Self, MailError> {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                .port(port)
                .build();
            Ok(SmtpMailer {
                transport,
                from: mailbox(from)?,
            })
        }
    }

    impl Mailer for SmtpMailer {
        async fn send(&self, email: &Email) -> Result<(), MailError> {
            let mut b = Message::builder()
                .from(self.from.clone())
                .subject(email.subject.clone());
            for to in &email.to {
                b = b.to(to
                    .parse()
                    .map_err(|e| MailError::Permanent(format!("recipient {to:?}: {e}")))?);
            }
            let msg = match &email.html {
                Some(html) => b.multipart(MultiPart::alternative_plain_html(email.text.clone(), html.clone())),
                None => b.body(email.text.clone()),
            }
            .map_err(|e| MailError::Permanent(e.to_string()))?;
            match self.transport.send(msg).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(MailError::Permanent(e.to_string())),
                Err(e) => Err(MailError::Transient(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn built_in_templates_render_strictly_and_escape_html() {
        let t = Templates::built_in();
        let ctx = serde_json::json!({"inviter": "Ada <ada@x>", "tenant": "Acme", "role": "admin", "link": "https://x/i", "expires": "Friday"});
        let e = t.render("invitation", &["bob@example.com".into()], &ctx).unwrap();
        assert_eq!(e.subject, "Ada <ada@x> invited you to Acme");
        assert!(e.text.contains("join Acme as admin"));
        assert!(e.html.unwrap().contains("Ada &lt;ada@x&gt;"));
        for name in ["trial_ending", "payment_failed", "tenant_suspended", "export_ready"] {
            assert!(
                t.render(name, &[], &serde_json::json!({})).is_err(),
                "{name}: variables are required"
            );
        }
        assert!(matches!(t.render("nope", &[], &ctx), Err(MailError::Template { .. })));
        let ctx = serde_json::json!({"tenant": "Acme", "amount": "€49", "reason": null, "link": "https://x/b"});
        let e = t.render("payment_failed", &[], &ctx).unwrap();
        assert!(e.text.contains("charge €49 for Acme. Please"));
    }
}
