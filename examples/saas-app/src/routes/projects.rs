//! Projects and their tasks. No handler filters on the tenant: row-level security scopes
//! every query of a `TenantTx` to the request's tenant.

use axum::extract::{Extension, Path};
use axum::http::StatusCode;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use saas_authz::ResourceRef;
use saas_authz::rbac::{Access, permission_denied};
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::validate::Valid;
use saas_core::{Principal, Problem};
use saas_tenancy::TenantTx;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use crate::app::Shared;

/// A project.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Project {
    /// Its id.
    pub id: Uuid,
    /// Its name, unique in the tenant.
    pub name: String,
    /// What it is about.
    pub description: String,
    /// Archived projects are read-only and do not count against the plan's limit.
    pub archived: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A task in a project.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Task {
    /// Its id.
    pub id: Uuid,
    /// Its project.
    pub project_id: Uuid,
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// The body of `POST /v1/projects`.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub struct NewProject {
    /// 1 to 200 characters, unique in the tenant.
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Up to 5,000 characters.
    #[validate(length(max = 5000))]
    #[serde(default)]
    #[schema(max_length = 5000)]
    pub description: String,
}

/// The body of `POST /v1/projects/{id}/tasks`.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
pub struct NewTask {
    /// 1 to 500 characters.
    #[validate(length(min = 1, max = 500))]
    #[schema(min_length = 1, max_length = 500)]
    pub title: String,
}

/// The routes of this module; the app adds the permission and entitlement layers.
pub(crate) fn routes() -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route("/v1/projects/{id}", get(get_project).delete(delete_project))
        .route("/v1/projects/{id}/archive", post(archive_project))
        .route("/v1/projects/{id}/tasks", get(list_tasks).post(create_task))
}

const PROJECT_COLUMNS: &str = "id, name, description, archived, created_at";

/// `GET /v1/projects`: the projects the caller may read — all of them through a
/// tenant-wide role, else those a resource grant opens.
#[utoipa::path(get, path = "/v1/projects", tag = "projects",
    responses((status = 200, description = "The projects the caller may read", body = [Project])))]
pub(crate) async fn list_projects(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
) -> Result<Json<Vec<Project>>, Problem> {
    let tenant = tx.tenant();
    shared.authz.ensure(tenant).await?;
    let read = shared.authz.permission("project:read").map_err(internal)?;
    let access = shared.authz.accessible(&principal, tenant, read, "project");
    let sql = format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE {} ORDER BY created_at, id LIMIT 500",
        Access::sql_condition("id", 1)
    );
    let rows: Vec<Project> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(access.as_filter())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

/// `POST /v1/projects` (`project:create`, and the plan's `projects` limit).
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = Project), (status = 402, description = "The plan's project limit is reached"),
              (status = 409, description = "A project of that name exists")))]
pub(crate) async fn create_project(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Valid(body): Valid<NewProject>,
) -> Result<(StatusCode, Json<Project>), Problem> {
    let tenant = tx.tenant();
    let project: Project = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO projects (tenant_id, name, description, created_by) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, name) DO NOTHING RETURNING {PROJECT_COLUMNS}"
    )))
    .bind(tenant)
    .bind(&body.name)
    .bind(&body.description)
    .bind(principal.user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Problem::conflict(format!("a project named {:?} exists", body.name)))?;
    let record = AuditRecord::new(tenant, Actor::from(&principal), "project.created")?.target("project", project.id);
    audit::record(&mut tx, &record).await?;
    notify(&mut tx, "project.created", &project).await?;
    tx.commit().await?;
    shared.recount(tenant).await;
    Ok((StatusCode::CREATED, Json(project)))
}

/// `GET /v1/projects/{id}`: 404 for a project of another tenant or one the caller may not
/// read (the same answer, so that ids cannot be probed).
#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects", params(("id" = Uuid, Path, description = "The project")),
    responses((status = 200, body = Project)))]
async fn get_project(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<Json<Project>, Problem> {
    allowed(&shared, &principal, &tx, "project:read", id)
        .await
        .map_err(|_| Problem::not_found())?;
    let project = find(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(project))
}

/// `DELETE /v1/projects/{id}` (`project:delete` on the project).
#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "projects", params(("id" = Uuid, Path, description = "The project")),
    responses((status = 204, description = "Deleted")))]
async fn delete_project(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Problem> {
    let tenant = tx.tenant();
    let readable = allowed(&shared, &principal, &tx, "project:read", id).await.is_ok();
    find(&mut tx, id)
        .await
        .and_then(|p| if readable { Ok(p) } else { Err(Problem::not_found()) })?;
    allowed(&shared, &principal, &tx, "project:delete", id).await?;
    sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let record = AuditRecord::new(tenant, Actor::from(&principal), "project.deleted")?.target("project", id);
    audit::record(&mut tx, &record).await?;
    notify(&mut tx, "project.deleted", &serde_json::json!({ "id": id })).await?;
    tx.commit().await?;
    shared.recount(tenant).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/projects/{id}/archive` (`project:update` on the project).
#[utoipa::path(post, path = "/v1/projects/{id}/archive", tag = "projects", params(("id" = Uuid, Path, description = "The project")),
    responses((status = 200, body = Project)))]
async fn archive_project(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<Json<Project>, Problem> {
    let tenant = tx.tenant();
    allowed(&shared, &principal, &tx, "project:read", id)
        .await
        .map_err(|_| Problem::not_found())?;
    allowed(&shared, &principal, &tx, "project:update", id).await?;
    let project: Project = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE projects SET archived = true WHERE id = $1 RETURNING {PROJECT_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(Problem::not_found)?;
    let record = AuditRecord::new(tenant, Actor::from(&principal), "project.archived")?.target("project", id);
    audit::record(&mut tx, &record).await?;
    notify(&mut tx, "project.archived", &project).await?;
    tx.commit().await?;
    shared.recount(tenant).await;
    Ok(Json(project))
}

/// `GET /v1/projects/{id}/tasks`.
#[utoipa::path(get, path = "/v1/projects/{id}/tasks", tag = "tasks", params(("id" = Uuid, Path, description = "The project")),
    responses((status = 200, body = [Task])))]
async fn list_tasks(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<Task>>, Problem> {
    allowed(&shared, &principal, &tx, "task:list", id)
        .await
        .map_err(|_| Problem::not_found())?;
    find(&mut tx, id).await?;
    let rows: Vec<Task> = sqlx::query_as(
        "SELECT id, project_id, title, done, created_at FROM tasks WHERE project_id = $1 \
         ORDER BY created_at, id LIMIT 1000",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

/// `POST /v1/projects/{id}/tasks` (`task:create` on the project: a tenant-wide role, or
/// a grant on the project — its editors).
#[utoipa::path(post, path = "/v1/projects/{id}/tasks", tag = "tasks", params(("id" = Uuid, Path, description = "The project")),
    request_body = NewTask, responses((status = 201, body = Task), (status = 409, description = "The project is archived")))]
async fn create_task(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
    Valid(body): Valid<NewTask>,
) -> Result<(StatusCode, Json<Task>), Problem> {
    let tenant = tx.tenant();
    allowed(&shared, &principal, &tx, "task:list", id)
        .await
        .map_err(|_| Problem::not_found())?;
    let project = find(&mut tx, id).await?;
    allowed(&shared, &principal, &tx, "task:create", id).await?;
    if project.archived {
        return Err(Problem::conflict("the project is archived"));
    }
    let task: Task = sqlx::query_as(
        "INSERT INTO tasks (tenant_id, project_id, title, created_by) VALUES ($1, $2, $3, $4) \
         RETURNING id, project_id, title, done, created_at",
    )
    .bind(tenant)
    .bind(id)
    .bind(&body.title)
    .bind(principal.user_id)
    .fetch_one(&mut *tx)
    .await?;
    let record = AuditRecord::new(tenant, Actor::from(&principal), "task.created")?.target("task", task.id);
    audit::record(&mut tx, &record).await?;
    notify(&mut tx, "task.created", &task).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(task)))
}

/// `GET /v1/projects/{id}/tasks.csv`: the project's tasks as CSV, for tenants the
/// `tasks-csv-export` flag is on for (404 for the others: the route is not released to
/// them).
#[utoipa::path(get, path = "/v1/projects/{id}/tasks.csv", tag = "tasks", params(("id" = Uuid, Path, description = "The project")),
    responses((status = 200, description = "The tasks as CSV (RFC 4180)", content_type = "text/csv", body = String)))]
pub(crate) async fn tasks_csv(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
    Path(id): Path<Uuid>,
) -> Result<([(http::header::HeaderName, &'static str); 1], String), Problem> {
    allowed(&shared, &principal, &tx, "task:list", id)
        .await
        .map_err(|_| Problem::not_found())?;
    find(&mut tx, id).await?;
    let rows: Vec<Task> = sqlx::query_as(
        "SELECT id, project_id, title, done, created_at FROM tasks WHERE project_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // RFC 4180: quote every text field, double the quotes inside; a leading =, +, - or @
    // is prefixed with ' so that a spreadsheet does not run it as a formula.
    let field = |s: &str| {
        let s = if s.starts_with(['=', '+', '-', '@']) {
            format!("'{s}")
        } else {
            s.to_owned()
        };
        format!("\"{}\"", s.replace('"', "\"\""))
    };
    let mut out = String::from("id,title,done,created_at\r\n");
    for t in rows {
        out.push_str(&format!(
            "{},{},{},{}\r\n",
            t.id,
            field(&t.title),
            t.done,
            t.created_at.to_rfc3339()
        ));
    }
    Ok(([(http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], out))
}

/// Queues `event_type` for the tenant's subscribed webhook endpoints, in the same
/// transaction as the change: sent if and only if it commits.
async fn notify(tx: &mut TenantTx, event_type: &str, data: &impl Serialize) -> Result<(), Problem> {
    let data = serde_json::to_value(data).map_err(internal)?;
    saas_events::webhook::send(tx, event_type, &data).await?;
    Ok(())
}

async fn find(tx: &mut TenantTx, id: Uuid) -> Result<Project, Problem> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(Problem::not_found)
}

/// `permission` on the project `id` (its own grants and the tenant-wide roles): 403
/// `permission-denied` when not allowed.
async fn allowed(
    shared: &Shared,
    principal: &Principal,
    tx: &TenantTx,
    permission: &str,
    id: Uuid,
) -> Result<(), Problem> {
    let tenant = tx.tenant();
    shared.authz.ensure(tenant).await?;
    let p = shared.authz.permission(permission).map_err(internal)?;
    let decision = shared
        .authz
        .check(principal, tenant, p, Some(ResourceRef::new("project", id)));
    if decision.allowed() {
        return Ok(());
    }
    let why = shared.authz.explain(tenant, &decision);
    tracing::info!(user_id = %principal.user_id, %tenant, permission, reason = %why.reason, "permission denied");
    Err(permission_denied(permission))
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::internal().with_internal(e)
}
