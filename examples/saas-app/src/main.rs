//! `saas-app`: the saas-kit example application.
//!
//! ```text
//! cargo run -p saas-app                 # serve (the default), with in-process workers
//! cargo run -p saas-app -- migrate      # create the database and roles, migrate, verify
//! cargo run -p saas-app -- mint-token ada   # a fresh token for a demo user (local issuer)
//! ```

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use saas_app::app::{App, Billing, ConsoleMailer, Parts};
use saas_app::config::Config;
use saas_app::{product, seed, setup};
use saas_authz::{ClaimPreset, Issuer, LocalIssuer, Oidc};
use saas_billing::Simulator;
use saas_core::clock::{ManualClock, SystemClock};
use saas_core::crypto::Keyring;
use saas_core::telemetry::{self, LogFormat, TelemetryConfig};
use saas_events::mail::SmtpMailer;
use saas_tenancy::IsolationError;

const USAGE: &str = "usage: saas-app [serve | migrate | mint-token <user> | export <tenant> | restore <tenant> | purge-due | reconcile | catalog push]
  serve               create and migrate the database, seed the demo, serve the API (default)
  migrate             create and migrate the database, verify tenant isolation, exit
  mint-token <user>   print a token for a demo user (ada, ben, cy, dee, eve, gil, hal) from the local issuer
  export <tenant>     write the tenant's data (slug or id) to stdout as JSON Lines
  restore <tenant>    undo a deletion request before the purge
  purge-due           purge the tenants whose deletion retention has passed
  reconcile           compare Stripe's subscriptions with the mirror and fix what differs (Stripe only)
  catalog push        create or update Stripe's products and prices from the catalog (Stripe only)";

/// A failure worth one sentence to the person at the terminal, and the exit status.
struct Fail(String, u8);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string(), 1)
    }
}

fn fail(msg: impl Into<String>) -> Fail {
    Fail(msg.into(), 1)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => serve().await,
        ["migrate"] => migrate().await,
        ["mint-token", user] => mint_token(user),
        ["export", tenant] => export(tenant).await,
        ["restore", tenant] => restore(tenant).await,
        ["purge-due"] => purge_due().await,
        ["reconcile"] => reconcile().await,
        ["catalog", "push"] => catalog_push().await,
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Fail(format!("unknown command {:?}\n{USAGE}", args.join(" ")), 64)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("saas-app: {msg}");
            ExitCode::from(code)
        }
    }
}

fn config() -> Result<Config, Fail> {
    Config::from_env().map_err(fail)
}

/// Logs for a person by default (warnings only, readable); `LOG_FORMAT=json` and
/// `RUST_LOG` as in production.
fn init_telemetry() -> Result<telemetry::TelemetryGuard, Fail> {
    let mut cfg = TelemetryConfig::from_env().default_filter("warn,saas_authz::local=error");
    if std::env::var_os("LOG_FORMAT").is_none() {
        cfg = cfg.format(LogFormat::Pretty);
    }
    telemetry::init(cfg).map_err(|e| fail(format!("logging could not start: {e}")))
}

/// Creates the database and roles, migrates, verifies isolation (exit status 2 when the
/// database would leak).
async fn database(cfg: &Config) -> Result<setup::Database, Fail> {
    let db = setup::prepare(&cfg.admin_url, &cfg.database).await?;
    setup::migrate(&db.owner).await?;
    match saas_tenancy::verify_isolation(&db.app).await {
        Ok(_) => Ok(db),
        Err(IsolationError::Unsafe(problems)) => {
            let mut msg = format!(
                "refusing to serve: database {} does not keep tenants apart. Fix each of these (as the owner) and start again:",
                cfg.database
            );
            for p in problems {
                msg.push_str(&format!("\n  - {:?} on {}\n    fix: {}", p.kind, p.object, p.fix));
            }
            Err(Fail(msg, 2))
        }
        Err(e) => Err(fail(format!("the isolation check could not run: {e}"))),
    }
}

async fn migrate() -> Result<(), Fail> {
    let _telemetry = init_telemetry()?;
    let cfg = config()?;
    let db = database(&cfg).await?;
    println!("database {} is migrated and keeps tenants apart", db.name);
    Ok(())
}

/// The tenant named `slug_or_id`, as the platform sees it (any status).
async fn tenant_named(db: &setup::Database, slug_or_id: &str) -> Result<saas_core::TenantId, Fail> {
    let id: Option<saas_core::TenantId> =
        sqlx::query_scalar("SELECT id FROM saas.tenants WHERE slug = $1 OR id::text = $1")
            .bind(slug_or_id)
            .fetch_optional(&db.platform)
            .await?;
    id.ok_or_else(|| fail(format!("no tenant {slug_or_id:?} in database {}", db.name)))
}

fn cli_actor() -> saas_core::audit::Actor {
    saas_core::audit::Actor::System("saas-app command line".into())
}

async fn export(tenant: &str) -> Result<(), Fail> {
    let _telemetry = init_telemetry()?;
    let cfg = config()?;
    let db = database(&cfg).await?;
    let id = tenant_named(&db, tenant).await?;
    let report = saas_tenancy::export::export(&db.app, id, tokio::io::stdout()).await?;
    eprintln!("saas-app: exported {} rows of {tenant}", report.total());
    Ok(())
}

async fn restore(tenant: &str) -> Result<(), Fail> {
    let _telemetry = init_telemetry()?;
    let cfg = config()?;
    let db = database(&cfg).await?;
    let id = tenant_named(&db, tenant).await?;
    let platform = saas_tenancy::PlatformPool::new(db.platform.clone());
    saas_tenancy::lifecycle::restore(&platform, id, cli_actor(), &SystemClock).await?;
    println!("{tenant} is restored");
    Ok(())
}

async fn purge_due() -> Result<(), Fail> {
    let _telemetry = init_telemetry()?;
    let cfg = config()?;
    let db = database(&cfg).await?;
    let platform = saas_tenancy::PlatformPool::new(db.platform.clone());
    let purged = saas_tenancy::lifecycle::purge_due(&platform, cli_actor(), &SystemClock).await?;
    println!("{} tenant(s) purged", purged.len());
    Ok(())
}

/// Stripe from the environment; the simulator lives only inside `serve`.
fn stripe(cfg: &Config) -> Result<saas_billing::stripe::Stripe, Fail> {
    let Some(key) = &cfg.stripe_secret_key else {
        return Err(fail(
            "this command talks to Stripe: set STRIPE_SECRET_KEY (the simulator lives inside `saas-app serve`)",
        ));
    };
    let mut stripe = saas_billing::stripe::Stripe::new(key.clone())?;
    if let Some(base) = &cfg.stripe_api_base {
        stripe = stripe.base_url(base.clone());
    }
    Ok(stripe)
}

async fn reconcile() -> Result<(), Fail> {
    let _telemetry = init_telemetry()?;
    let cfg = config()?;
    let stripe = stripe(&cfg)?;
    let db = database(&cfg).await?;
    let platform = saas_tenancy::PlatformPool::new(db.platform.clone());
    let report = saas_billing::reconcile::reconcile(&platform, &stripe).await?;
    println!(
        "{} subscriptions checked, {} fixed, {} customers without a tenant",
        report.checked,
        report.drift.len(),
        report.orphan_customers.len()
    );
    Ok(())
}

async fn catalog_push() -> Result<(), Fail> {
    let _telemetry = init_telemetry()?;
    let cfg = config()?;
    let stripe = stripe(&cfg)?;
    let report = saas_billing::catalog::push(&product::catalog()?, &stripe).await?;
    println!(
        "products created {:?}, renamed {:?}; prices created {:?}, archived {:?}",
        report.products_created, report.products_renamed, report.prices_created, report.prices_archived
    );
    Ok(())
}

/// The local issuer's signing key, made on first use and kept under the data directory
/// so that the issuer, its users and its tokens survive restarts.
fn local_key(dir: &Path) -> Result<Vec<u8>, Fail> {
    let path = dir.join("local-issuer-es256.pk8");
    match std::fs::read(&path) {
        Ok(key) => Ok(key),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| {
                fail(format!(
                    "cannot create {} ({e}); set SAAS_APP_DIR to a writable directory",
                    dir.display()
                ))
            })?;
            let key = LocalIssuer::generate_es256_pkcs8()?;
            write_private(&path, &key).map_err(|e| {
                fail(format!(
                    "cannot write {} ({e}); set SAAS_APP_DIR to a writable directory",
                    path.display()
                ))
            })?;
            Ok(key)
        }
        Err(e) => Err(fail(format!(
            "cannot read {} ({e}); delete it or set SAAS_APP_DIR",
            path.display()
        ))),
    }
}

/// Writes a secret readable by its owner only (mode 0600 on Unix).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

/// `STRIPE_WEBHOOK_SECRET`, or one generated on first start and kept under the data
/// directory (printed in the banner, for signing test deliveries).
fn webhook_secret(dir: &Path) -> Result<(String, bool), Fail> {
    if let Ok(s) = std::env::var("STRIPE_WEBHOOK_SECRET")
        && !s.trim().is_empty()
    {
        return Ok((s, false));
    }
    let path = dir.join("stripe-webhook-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok((s.trim().to_owned(), true));
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| fail(format!("no randomness for the webhook secret: {e}")))?;
    let secret = format!("whsec_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    std::fs::create_dir_all(dir)
        .and_then(|()| write_private(&path, secret.as_bytes()))
        .map_err(|e| {
            fail(format!(
                "cannot write {} ({e}); set SAAS_APP_DIR to a writable directory",
                path.display()
            ))
        })?;
    Ok((secret, true))
}

/// `SAAS_ENCRYPTION_KEYS`, or a key generated on first start and kept under the data
/// directory (invitation links are sealed with it in e-mail jobs).
fn keyring(dir: &Path) -> Result<Keyring, Fail> {
    if std::env::var_os(saas_core::crypto::KEYS_ENV).is_some() {
        return Keyring::from_env().map_err(|e| fail(format!("{}: {e}", saas_core::crypto::KEYS_ENV)));
    }
    let path = dir.join("encryption-keys");
    let spec = match std::fs::read_to_string(&path) {
        Ok(spec) => spec,
        Err(_) => {
            let spec = format!("local1:{}", Keyring::generate_key());
            std::fs::create_dir_all(dir)
                .and_then(|()| write_private(&path, spec.as_bytes()))
                .map_err(|e| {
                    fail(format!(
                        "cannot write {} ({e}); set SAAS_APP_DIR to a writable directory",
                        path.display()
                    ))
                })?;
            spec
        }
    };
    Keyring::from_spec(spec.trim()).map_err(|e| fail(format!("{}: {e}; delete it to make a new key", path.display())))
}

fn local_issuer_url(cfg: &Config) -> String {
    format!("http://{}:{}", cfg.host, cfg.local_issuer_port)
}

fn mint_token(user: &str) -> Result<(), Fail> {
    let cfg = config()?;
    if cfg.oidc_issuer.is_some() {
        return Err(fail(
            "OIDC_ISSUER is set: tokens come from that identity provider, not from saas-app",
        ));
    }
    let Some(person) = seed::person_named(user) else {
        let known: Vec<&str> = seed::ORGS
            .iter()
            .flat_map(|o| o.people.iter().map(|p| p.subject))
            .collect();
        return Err(fail(format!("no demo user {user:?}; try one of {}", known.join(", "))));
    };
    let email = person.email;
    let key = local_key(&cfg.data_dir)?;
    let issuer = LocalIssuer::offline(&local_issuer_url(&cfg), &key)?;
    println!(
        "{}",
        issuer
            .token(user)
            .audience(&cfg.oidc_audience)
            .email(email)
            .mfa(true)
            .expires_in(12 * 3600)
            .sign()
    );
    Ok(())
}

async fn serve() -> Result<(), Fail> {
    let _telemetry = init_telemetry()?;
    let cfg = config()?;
    let db = database(&cfg).await?;

    // Bind first: a busy port is the most common mistake, and it costs nothing to find out.
    let addr: SocketAddr = format!("{}:{}", cfg.host, cfg.port)
        .parse()
        .map_err(|_| fail(format!("HOST={:?} is not an IP address", cfg.host)))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        ErrorKind::AddrInUse => fail(format!(
            "port {} is taken (another saas-app?): stop what uses it, or start with PORT=<another port>",
            cfg.port
        )),
        _ => fail(format!("cannot listen on {addr}: {e}")),
    })?;

    // Identity: the configured provider, or a local development issuer.
    let (oidc, local) = match &cfg.oidc_issuer {
        Some(url) => {
            let issuer = Issuer::discover(url).await.map_err(|e| {
                fail(format!(
                    "OIDC_ISSUER {url} could not be discovered ({e}); check the URL"
                ))
            })?;
            let _refresh = issuer.spawn_refresh(Duration::from_secs(600));
            let preset = match cfg.oidc_claims.as_deref() {
                Some("clerk") => ClaimPreset::Clerk,
                Some(c) if c.starts_with("auth0:") => ClaimPreset::auth0(c.trim_start_matches("auth0:")),
                _ => ClaimPreset::Oidc,
            };
            (Oidc::new(issuer).audience(&cfg.oidc_audience).claims(preset), None)
        }
        None => {
            let key = local_key(&cfg.data_dir)?;
            let at: SocketAddr = format!("{}:{}", cfg.host, cfg.local_issuer_port)
                .parse()
                .map_err(|_| fail(format!("HOST={:?} is not an IP address", cfg.host)))?;
            let idp = LocalIssuer::start_on(at, &key).await.map_err(|e| match e.kind() {
                ErrorKind::AddrInUse => fail(format!(
                    "port {} (the local identity provider) is taken: stop what uses it, or set LOCAL_ISSUER_PORT",
                    cfg.local_issuer_port
                )),
                _ => fail(format!("the local identity provider could not start: {e}")),
            })?;
            let oidc = idp.oidc(&cfg.oidc_audience).await?;
            (oidc, Some(idp))
        }
    };

    // Billing: Stripe when configured, else the simulator.
    let catalog = product::catalog()?;
    let billing = match &cfg.stripe_secret_key {
        Some(key) => {
            let mut stripe = saas_billing::stripe::Stripe::new(key.clone())?;
            if let Some(base) = &cfg.stripe_api_base {
                stripe = stripe.base_url(base.clone());
            }
            Billing::Stripe(Arc::new(stripe))
        }
        None => {
            let sim = Simulator::new(ManualClock::new(chrono::Utc::now()));
            saas_billing::catalog::push(&catalog, &sim).await?;
            Billing::Simulator(Arc::new(sim))
        }
    };
    let (secret, generated_secret) = webhook_secret(&cfg.data_dir)?;
    let parts = Parts {
        oidc,
        billing: billing.clone(),
        webhook_secret: secret.clone(),
        public_url: cfg.public_url.clone(),
        clock: Arc::new(SystemClock),
        keyring: Arc::new(keyring(&cfg.data_dir)?),
        allow_local_webhooks: cfg.allow_local_webhooks,
        rate_store: match &cfg.redis_url {
            Some(url) => saas_app::app::RateStore::Redis(
                saas_core::ratelimit::RedisStore::new(url, "saas-app:rl:")
                    .map_err(|e| fail(format!("REDIS_URL {url}: {e}")))?,
            ),
            None => saas_app::app::RateStore::Memory(saas_core::ratelimit::MemoryStore::new()),
        },
        rate_override: cfg.rate_override,
    };
    let app = App::start(db, parts).await?;
    let issuer = match &local {
        Some(idp) => idp.issuer().to_owned(),
        None => cfg.oidc_issuer.clone().unwrap_or_default(),
    };
    let demo = match &local {
        Some(_) => seed::demo(&app.shared, &issuer, &SystemClock).await?,
        None => Vec::new(),
    };
    let worker = match &cfg.smtp {
        Some(smtp) => {
            let mailer = match &smtp.credentials {
                Some((user, password)) => SmtpMailer::relay(&smtp.host, user, password, &smtp.from),
                None => SmtpMailer::unencrypted(&smtp.host, smtp.port, &smtp.from),
            }
            .map_err(|e| fail(format!("SMTP_* settings: {e}")))?;
            app.worker(mailer).await?
        }
        None => app.worker(ConsoleMailer).await?,
    };

    if let Some(port) = cfg.bare_port {
        bare_twins(&app, &cfg.host, port).await?;
    }
    banner(&cfg, local.as_ref(), &demo, &billing, &secret, generated_secret);
    axum::serve(listener, app.router.clone())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("saas-app: stopping (jobs in flight get 10 s)");
    worker.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// The load test's bare twins, on `port`: `GET /bare/ping` with no layer at all, and
/// `GET /bare/projects`, the projects query of `GET /v1/projects` for acme with `WHERE
/// tenant_id` on a plain pool (the platform role, which row-level security does not
/// apply to). Only with `SAAS_APP_BARE_PORT`: they answer without any credential.
async fn bare_twins(app: &App, host: &str, port: u16) -> Result<(), Fail> {
    use axum::routing::get;
    let pool = app.shared.db.platform.clone();
    let acme: saas_core::TenantId = sqlx::query_scalar("SELECT id FROM saas.tenants WHERE slug = 'acme'")
        .fetch_one(&pool)
        .await?;
    let router = axum::Router::new().route("/bare/ping", get(|| async { "pong" })).route(
        "/bare/projects",
        get(move || {
            let pool = pool.clone();
            async move {
                let rows: Vec<saas_app::routes::projects::Project> = sqlx::query_as(
                    "SELECT id, name, description, archived, created_at FROM projects WHERE tenant_id = $1 \
                     ORDER BY created_at, id LIMIT 500",
                )
                .bind(acme)
                .fetch_all(&pool)
                .await
                .map_err(|e| saas_core::Problem::internal().with_internal(e))?;
                Ok::<_, saas_core::Problem>(axum::Json(rows))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| fail(format!("SAAS_APP_BARE_PORT {port}: {e}")))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(())
}

fn banner(
    cfg: &Config,
    local: Option<&LocalIssuer>,
    demo: &[seed::DemoUser],
    billing: &Billing,
    secret: &str,
    generated_secret: bool,
) {
    let base = &cfg.public_url;
    let mut out = format!(
        "\nsaas-app is serving on {base}  (database {}; Ctrl-C stops)\n\n",
        cfg.database
    );
    out.push_str(&format!("  about this API   curl -s {base}/\n"));
    match local {
        Some(idp) => {
            out.push_str(&format!(
                "  identity         local development issuer at {} (not for production; set OIDC_ISSUER for a real one)\n",
                idp.issuer()
            ));
        }
        None => out.push_str(&format!(
            "  identity         {}\n",
            cfg.oidc_issuer.as_deref().unwrap_or_default()
        )),
    }
    out.push_str(match billing {
        Billing::Simulator(_) => "  billing          the simulator (not Stripe; set STRIPE_SECRET_KEY for Stripe)\n",
        Billing::Stripe(_) => "  billing          Stripe\n",
    });
    match &cfg.smtp {
        Some(smtp) => out.push_str(&format!("  e-mail           through {}\n", smtp.host)),
        None => {
            out.push_str("  e-mail           printed here (console mailer; nothing is sent; set SMTP_HOST to send)\n")
        }
    }
    if generated_secret {
        out.push_str(&format!(
            "  stripe webhooks  POST {base}/webhooks/stripe, signed with {secret} (generated; set STRIPE_WEBHOOK_SECRET)\n"
        ));
    } else {
        out.push_str(&format!(
            "  stripe webhooks  POST {base}/webhooks/stripe (STRIPE_WEBHOOK_SECRET)\n"
        ));
    }
    if let Some(idp) = local {
        out.push_str(
            "\nDemo users (tokens valid 12 h; `cargo run -p saas-app -- mint-token <user>` makes new ones):\n",
        );
        for u in demo {
            out.push_str(&format!("  {:<4} {:<8} of {}\n", u.subject, u.role, u.tenant));
        }
        let token = |sub: &str| {
            let email = demo.iter().find(|u| u.subject == sub).map_or("", |u| u.email);
            idp.token(sub)
                .audience(&cfg.oidc_audience)
                .email(email)
                .mfa(true)
                .expires_in(12 * 3600)
                .sign()
        };
        let (ada, dee, gil) = (token("ada"), token("dee"), token("gil"));
        out.push_str(&format!(
            "\nTry:\n\
             \x20 ADA={ada}\n\
             \x20 DEE={dee}\n\
             \x20 GIL={gil}\n\n\
             \x20 # who am I (ada owns acme)\n\
             \x20 curl -s {base}/v1/me -H 'x-tenant-id: acme' -H \"authorization: Bearer $ADA\"\n\
             \x20 # acme's projects, and a new one\n\
             \x20 curl -s {base}/v1/projects -H 'x-tenant-id: acme' -H \"authorization: Bearer $ADA\"\n\
             \x20 curl -s {base}/v1/projects -H 'x-tenant-id: acme' -H \"authorization: Bearer $ADA\" -H 'content-type: application/json' -d '{{\"name\":\"Launch\"}}'\n\
             \x20 # dee is a viewer: 403 on creating a project\n\
             \x20 curl -s {base}/v1/projects -H 'x-tenant-id: acme' -H \"authorization: Bearer $DEE\" -H 'content-type: application/json' -d '{{\"name\":\"Nope\"}}'\n\
             \x20 # gil (globex) asking for acme: 404, as for a tenant that does not exist\n\
             \x20 curl -s {base}/v1/projects -H 'x-tenant-id: acme' -H \"authorization: Bearer $GIL\"\n\
             \x20 # acme's plan and usage; a checkout page for Pro\n\
             \x20 curl -s {base}/v1/billing -H 'x-tenant-id: acme' -H \"authorization: Bearer $ADA\"\n\
             \x20 curl -s {base}/v1/billing/checkout -H 'x-tenant-id: acme' -H \"authorization: Bearer $ADA\" -H 'content-type: application/json' -d '{{\"price\":\"pro_monthly\"}}'\n"
        ));
    }
    println!("{out}");
}
