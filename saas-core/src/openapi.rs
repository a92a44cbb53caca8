//! OpenAPI components for the responses every saas-kit route shares (feature `openapi`).
//!
//! [`SaasComponents`] adds to a `utoipa` document: the `Problem` schema (RFC 9457 with
//! `request_id` and `errors`), the `RateLimit-Limit`, `RateLimit-Remaining`,
//! `RateLimit-Reset` and `Retry-After` headers, the shared error responses
//! (`BadRequest`, `Unauthenticated`, `Forbidden`, `NotFound`, `Conflict`,
//! `Unprocessable`, `RateLimited`, `InternalError`), and the `PageRequest` parameters.
//! [`PageSchema`] documents a `Page<T>` for any item schema.
//!
//! ```
//! use saas_core::openapi::SaasComponents;
//! use utoipa::OpenApi;
//!
//! #[derive(OpenApi)]
//! #[openapi(modifiers(&SaasComponents))]
//! struct ApiDoc;
//!
//! let doc = ApiDoc::openapi();
//! let components = doc.components.unwrap();
//! assert!(components.schemas.contains_key("Problem"));
//! assert!(components.responses.contains_key("RateLimited"));
//! ```

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, OpenApi, RefOr, Required, ResponseBuilder};

use crate::problem::CONTENT_TYPE_PROBLEM;

/// Adds the shared components to an OpenAPI document (`modifiers(&SaasComponents)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SaasComponents;

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
}

fn integer(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .description(Some(description))
}

/// The RFC 9457 problem body as sent by saas-kit.
pub fn problem_schema() -> Schema {
    let error = ObjectBuilder::new()
        .property("pointer", string("JSON pointer to the offending field"))
        .property("code", string("Machine-readable reason"))
        .property("detail", string("Human-readable explanation"))
        .required("pointer")
        .required("code");
    ObjectBuilder::new()
        .description(Some(
            "An RFC 9457 problem. 5xx bodies carry only type, title, status and request_id.",
        ))
        .property(
            "type",
            string("Stable problem type, such as urn:saas-kit:problem:permission-denied"),
        )
        .property("title", string("Short summary of the problem type"))
        .property("status", integer("HTTP status code"))
        .property("detail", string("Explanation specific to this occurrence"))
        .property("instance", string("URI reference of this occurrence"))
        .property("request_id", string("The request id; quote it when contacting support"))
        .property(
            "errors",
            ArrayBuilder::new()
                .items(error)
                .description(Some("Field errors (400/422)")),
        )
        .required("type")
        .required("title")
        .required("status")
        .into()
}

/// A `Page<T>` schema whose items are `item` (a `$ref` to the item schema, typically).
#[derive(Debug, Clone, Copy)]
pub struct PageSchema;

impl PageSchema {
    /// The page schema for items described by `item`.
    pub fn of(item: impl Into<RefOr<Schema>>) -> Schema {
        ObjectBuilder::new()
            .property("items", ArrayBuilder::new().items(item.into()))
            .property("next", string("Cursor for the next page; absent on the last page"))
            .required("items")
            .into()
    }
}

/// The `limit` and `after` query parameters of a list endpoint.
pub fn page_parameters() -> Vec<Parameter> {
    vec![
        ParameterBuilder::new()
            .name("limit")
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some("Page size (default 50, capped at 200)"))
            .schema(Some(integer("Page size")))
            .build(),
        ParameterBuilder::new()
            .name("after")
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some("The `next` cursor of the previous page"))
            .schema(Some(string("Opaque cursor")))
            .build(),
    ]
}

impl utoipa::Modify for SaasComponents {
    fn modify(&self, openapi: &mut OpenApi) {
        let problem = || {
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"))))
                .build()
        };
        let header = |d: &str| {
            HeaderBuilder::new()
                .schema(Some(integer(d)))
                .description(Some(d))
                .build()
        };
        let error = |d: &str| {
            ResponseBuilder::new()
                .description(d)
                .content(CONTENT_TYPE_PROBLEM, problem())
        };
        let rate_limited = error("Too many requests; wait for Retry-After seconds")
            .header("Retry-After", header("Seconds until a request can pass"))
            .header("RateLimit-Limit", header("Requests allowed at once"))
            .header("RateLimit-Remaining", header("Requests left now"))
            .header("RateLimit-Reset", header("Seconds until the allowance is full again"));
        let mut components = ComponentsBuilder::new()
            .schema("Problem", problem_schema())
            .response("BadRequest", error("Malformed request"))
            .response("Unauthenticated", error("Authentication required"))
            .response("Forbidden", error("Not allowed"))
            .response("NotFound", error("Not found (also for tenants the caller may not see)"))
            .response("Conflict", error("Conflicts with the current state"))
            .response("Unprocessable", error("Invalid fields, listed with JSON pointers"))
            .response("RateLimited", rate_limited)
            .response("InternalError", error("Something failed on our side"))
            .build();
        match openapi.components.as_mut() {
            Some(existing) => {
                existing.schemas.append(&mut components.schemas);
                existing.responses.append(&mut components.responses);
            }
            None => openapi.components = Some(components),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::Modify;

    #[test]
    fn components_describe_what_the_layers_send() {
        let mut doc = utoipa::openapi::OpenApiBuilder::new().build();
        SaasComponents.modify(&mut doc);
        let json = serde_json::to_value(&doc).unwrap();
        let problem = &json["components"]["schemas"]["Problem"];
        // Every member a rendered problem carries is in the schema.
        let rendered: serde_json::Value = serde_json::from_slice(
            &crate::Problem::forbidden("no")
                .with_extension("request_id", "r")
                .to_json(),
        )
        .unwrap();
        for key in rendered.as_object().unwrap().keys() {
            assert!(
                problem["properties"].get(key).is_some(),
                "{key} missing from the schema"
            );
        }
        let limited = &json["components"]["responses"]["RateLimited"];
        for h in [
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
        ] {
            assert!(limited["headers"].get(h).is_some(), "{h}");
        }
        assert!(limited["content"].get(CONTENT_TYPE_PROBLEM).is_some());
        let page = serde_json::to_value(PageSchema::of(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "Project",
        ))))
        .unwrap();
        assert_eq!(
            page["properties"]["items"]["items"]["$ref"],
            "#/components/schemas/Project"
        );
        let params = serde_json::to_value(page_parameters()).unwrap();
        assert_eq!(params[0]["name"], "limit");
        assert_eq!(params[1]["in"], "query");
    }
}
