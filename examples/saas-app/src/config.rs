//! Configuration from the environment. Nothing is required: without configuration the
//! app runs against the local PostgreSQL with a local identity provider, the billing
//! simulator and a console mailer, and says so.

use std::path::PathBuf;

/// Everything the app reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: an administrator connection used to create the roles and the
    /// database (default: the local server as `root`).
    pub admin_url: String,
    /// `SAAS_APP_DB`: the database's name (default `saas_app`).
    pub database: String,
    /// `HOST` (default `127.0.0.1`).
    pub host: String,
    /// `PORT` (default 3000).
    pub port: u16,
    /// `OIDC_ISSUER`: a real identity provider (Auth0, Clerk, any OIDC issuer); without
    /// it a local development issuer runs on `LOCAL_ISSUER_PORT` (default `PORT + 1`).
    pub oidc_issuer: Option<String>,
    /// `OIDC_AUDIENCE` (default `api`).
    pub oidc_audience: String,
    /// `OIDC_CLAIMS`: `auth0:<namespace>`, `clerk`, or unset for plain OIDC claims.
    pub oidc_claims: Option<String>,
    /// `LOCAL_ISSUER_PORT`.
    pub local_issuer_port: u16,
    /// `STRIPE_SECRET_KEY`: Stripe instead of the simulator.
    pub stripe_secret_key: Option<String>,
    /// `STRIPE_API_BASE`: another Stripe-compatible server (localstripe, say).
    pub stripe_api_base: Option<String>,
    /// `SAAS_APP_DIR`: where the app keeps its local files (the local issuer's key, the
    /// generated webhook secret); default `target/saas-app`.
    pub data_dir: PathBuf,
    /// `PUBLIC_URL`: the URL people reach the app at (default `http://HOST:PORT`).
    pub public_url: String,
    /// `SMTP_HOST`: send e-mail through this server instead of printing it; with
    /// `SMTP_USERNAME`/`SMTP_PASSWORD` it is a TLS relay (port 465), without them plain
    /// SMTP on `SMTP_PORT` (default 25; for a local sink like Mailpit, 1025).
    pub smtp: Option<Smtp>,
    /// `WEBHOOKS_ALLOW_LOCAL=1`: tenants may register webhook endpoints on loopback over
    /// plain http (development only; production refuses private addresses).
    pub allow_local_webhooks: bool,
    /// `REDIS_URL`: count rate limits in Redis, shared by every instance (default: in
    /// this process).
    pub redis_url: Option<String>,
    /// `SAAS_APP_RATE_LIMIT`: requests per minute per tenant for every plan (load tests);
    /// default: the plan's quota.
    pub rate_override: Option<u32>,
    /// `SAAS_APP_BARE_PORT`: also serve the load test's bare twins (`/bare/ping`,
    /// `/bare/projects`) on this port. Never in production.
    pub bare_port: Option<u16>,
}

/// An SMTP server to send e-mail through.
#[derive(Debug, Clone)]
pub struct Smtp {
    /// `SMTP_HOST`.
    pub host: String,
    /// `SMTP_PORT` (plain SMTP only).
    pub port: u16,
    /// `SMTP_USERNAME` and `SMTP_PASSWORD`.
    pub credentials: Option<(String, String)>,
    /// `SMTP_FROM` (default `saas-app <noreply@localhost>`).
    pub from: String,
}

impl Config {
    /// Reads the environment; a malformed number is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let port = |k: &str, default: u16| -> Result<u16, String> {
            var(k).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("{k}={v:?} is not a port number (1-65535)"))
            })
        };
        let host = var("HOST").unwrap_or_else(|| "127.0.0.1".into());
        let p = port("PORT", 3000)?;
        Ok(Config {
            admin_url: var("DATABASE_URL").unwrap_or_else(|| crate::setup::DEFAULT_ADMIN_URL.into()),
            database: var("SAAS_APP_DB").unwrap_or_else(|| "saas_app".into()),
            public_url: var("PUBLIC_URL").unwrap_or_else(|| format!("http://{host}:{p}")),
            host,
            port: p,
            oidc_issuer: var("OIDC_ISSUER"),
            oidc_audience: var("OIDC_AUDIENCE").unwrap_or_else(|| "api".into()),
            oidc_claims: var("OIDC_CLAIMS"),
            local_issuer_port: port("LOCAL_ISSUER_PORT", p.saturating_add(1))?,
            stripe_secret_key: var("STRIPE_SECRET_KEY"),
            stripe_api_base: var("STRIPE_API_BASE"),
            data_dir: var("SAAS_APP_DIR").map_or_else(|| PathBuf::from("target/saas-app"), PathBuf::from),
            redis_url: var("REDIS_URL"),
            rate_override: match var("SAAS_APP_RATE_LIMIT") {
                Some(v) => Some(
                    v.trim()
                        .parse()
                        .map_err(|_| format!("SAAS_APP_RATE_LIMIT={v:?} is not a number of requests per minute"))?,
                ),
                None => None,
            },
            bare_port: match var("SAAS_APP_BARE_PORT") {
                Some(_) => Some(port("SAAS_APP_BARE_PORT", 0)?),
                None => None,
            },
            allow_local_webhooks: var("WEBHOOKS_ALLOW_LOCAL")
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            smtp: match var("SMTP_HOST") {
                Some(host) => Some(Smtp {
                    host,
                    port: port("SMTP_PORT", 25)?,
                    credentials: var("SMTP_USERNAME").zip(var("SMTP_PASSWORD")),
                    from: var("SMTP_FROM").unwrap_or_else(|| "saas-app <noreply@localhost>".into()),
                }),
                None => None,
            },
        })
    }
}
