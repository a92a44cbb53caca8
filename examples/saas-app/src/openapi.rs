//! The API's OpenAPI document, generated from the handlers' annotations, with saas-core's
//! shared components: every error answer is a problem+json response of the components.

use saas_core::openapi::SaasComponents;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The document (`GET /openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "saas-app",
        description = "The saas-kit example: a multi-tenant project-and-task API. Authenticate with a bearer token \
                       (OIDC, or the local issuer in development) or an API key, and name the tenant in X-Tenant-Id."
    ),
    paths(
        routes::root,
        routes::health,
        routes::ping,
        routes::account::me,
        routes::account::members,
        routes::projects::list_projects,
        routes::projects::create_project,
        routes::projects::get_project,
        routes::projects::delete_project,
        routes::projects::archive_project,
        routes::projects::list_tasks,
        routes::projects::create_task,
        routes::projects::tasks_csv,
        routes::people::invite,
        routes::people::accept,
        routes::people::set_roles,
        routes::people::remove,
        routes::people::create_key,
        routes::people::list_keys,
        routes::people::revoke_key,
        routes::hooks::create,
        routes::hooks::list,
        routes::tenant::export,
        routes::tenant::request_deletion,
        routes::billing::summary,
        routes::billing::checkout,
        routes::billing::portal,
        routes::billing::simulator_complete,
        stripe_webhook,
    ),
    modifiers(&SaasComponents, &Common),
)]
pub struct ApiDoc;

/// `POST /webhooks/stripe` (served by saas-billing's endpoint; documented here).
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing", security(()),
    request_body(content = Object, description = "A Stripe event, signed in the Stripe-Signature header"),
    params(("stripe-signature" = String, Header, description = "t=<unix seconds>,v1=<HMAC-SHA256>")),
    responses((status = 200, description = "Stored (or a duplicate); processed by the worker"),
              (status = 400, description = "Missing, stale or wrong signature, or not an event")))]
#[allow(dead_code)]
fn stripe_webhook() {}

/// What every operation shares: bearer authentication (or an API key), the tenant header
/// on tenant routes, and the shared problem+json responses for every error status.
struct Common;

/// Error statuses and the shared response (saas-core's components, and 402 here) each
/// one refers to.
const ERRORS: &[(&str, &str)] = &[
    ("400", "BadRequest"),
    ("401", "Unauthenticated"),
    ("402", "PaymentRequired"),
    ("403", "Forbidden"),
    ("404", "NotFound"),
    ("409", "Conflict"),
    ("410", "Gone"),
    ("415", "UnsupportedMediaType"),
    ("422", "Unprocessable"),
    ("429", "RateLimited"),
    ("500", "InternalError"),
];

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("An OIDC access token, or an API key"))
                        .build(),
                ),
            );
            let problem = || {
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
                    .build()
            };
            components.responses.insert(
                "PaymentRequired".into(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(
                            "The plan does not allow it: names the feature, limit, usage and the plan that would",
                        )
                        .content(saas_core::problem::CONTENT_TYPE_PROBLEM, problem())
                        .build(),
                ),
            );
            components.responses.insert(
                "UnsupportedMediaType".into(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description("The body must be application/json")
                        .content(saas_core::problem::CONTENT_TYPE_PROBLEM, problem())
                        .build(),
                ),
            );
            components.responses.insert(
                "Gone".into(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description("No longer available")
                        .content(saas_core::problem::CONTENT_TYPE_PROBLEM, problem())
                        .build(),
                ),
            );
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/");
            let tenant_scoped = api && path != "/v1/invitations/accept";
            for op in operations(item) {
                let public = op.security.as_ref().is_some_and(|s| s.iter().all(is_empty_requirement));
                if api && !public {
                    op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                }
                if tenant_scoped {
                    op.parameters.get_or_insert_with(Vec::new).push(RefOr::T(
                        ParameterBuilder::new()
                            .name("x-tenant-id")
                            .parameter_in(ParameterIn::Header)
                            .required(Required::True)
                            .description(Some("The tenant: its slug or id"))
                            .schema(Some(
                                utoipa::openapi::ObjectBuilder::new()
                                    .schema_type(utoipa::openapi::schema::Type::String)
                                    .min_length(Some(1))
                                    .build(),
                            ))
                            .build(),
                    ));
                }
                // Every error an operation can answer: the shared problem responses.
                let mut statuses: Vec<&str> = vec!["500"];
                if api {
                    statuses.extend(["400", "401", "403", "404", "429"]);
                    if op.request_body.is_some() {
                        statuses.extend(["415", "422"]);
                    }
                }
                let listed: Vec<String> = op.responses.responses.keys().cloned().collect();
                for (status, name) in ERRORS {
                    if statuses.contains(status) || listed.iter().any(|l| l == status) {
                        op.responses
                            .responses
                            .insert((*status).to_owned(), RefOr::Ref(Ref::from_response_name(*name)));
                    }
                }
            }
        }
    }
}

fn is_empty_requirement(r: &SecurityRequirement) -> bool {
    serde_json::to_value(r).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The document as JSON.
pub fn json() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}
