//! A repository building block for tenant-owned tables.
//!
//! Implement [`TenantRecord`] for a row type and [`Repo`] gives it the common CRUD,
//! always through a [`TenantTx`]: `tenant_id` is filled from the transaction on insert and
//! never appears in application code.
//!
//! ```no_run
//! use saas_tenancy::repo::{Repo, TenantRecord};
//! use sqlx::QueryBuilder;
//!
//! #[derive(sqlx::FromRow)]
//! struct Project { id: uuid::Uuid, name: String }
//!
//! impl TenantRecord for Project {
//!     type Id = uuid::Uuid;
//!     const TABLE: &'static str = "projects";
//!     const COLUMNS: &'static [&'static str] = &["id", "name"];
//!     fn id(&self) -> uuid::Uuid { self.id }
//!     fn push_values(&self, row: &mut sqlx::query_builder::Separated<'_, sqlx::Postgres, &'static str>) {
//!         row.push_bind(self.id).push_bind(self.name.clone());
//!     }
//! }
//!
//! # async fn demo(mut tx: saas_tenancy::TenantTx) -> Result<(), saas_tenancy::TenancyError> {
//! let p = Repo::<Project>::insert(&mut tx, &Project { id: uuid::Uuid::now_v7(), name: "Apollo".into() }).await?;
//! let again = Repo::<Project>::get(&mut tx, p.id).await?;
//! let page = Repo::<Project>::list(&mut tx, None, 50).await?;
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use sqlx::postgres::PgRow;
use sqlx::query_builder::Separated;
use sqlx::{FromRow, Postgres, QueryBuilder};

use crate::error::TenancyError;
use crate::tx::TenantTx;

/// A row type of a tenant table (one with `tenant_id` and row-level security).
pub trait TenantRecord: for<'r> FromRow<'r, PgRow> + Send + Unpin + Sized {
    /// The primary key type (besides `tenant_id`).
    type Id: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + Sync + Clone + 'static;
    /// The table, as written in SQL (`projects`, `app.projects`). A constant, never input.
    const TABLE: &'static str;
    /// The columns besides `tenant_id`, the id first. Constants, never input.
    const COLUMNS: &'static [&'static str];
    /// This row's id.
    fn id(&self) -> Self::Id;
    /// Binds this row's values in [`COLUMNS`](Self::COLUMNS) order.
    fn push_values(&self, row: &mut Separated<'_, Postgres, &'static str>);
}

/// CRUD for a [`TenantRecord`] type, scoped by the [`TenantTx`] it runs in.
#[derive(Debug)]
pub struct Repo<T>(PhantomData<T>);

fn columns<T: TenantRecord>() -> String {
    T::COLUMNS.join(", ")
}

fn id_column<T: TenantRecord>() -> &'static str {
    T::COLUMNS.first().copied().unwrap_or("id")
}

impl<T: TenantRecord> Repo<T> {
    /// Inserts a row for the transaction's tenant and returns it as stored.
    pub async fn insert(tx: &mut TenantTx, row: &T) -> Result<T, TenancyError> {
        let mut b = QueryBuilder::new(format!(
            "INSERT INTO {} (tenant_id, {}) VALUES (",
            T::TABLE,
            columns::<T>()
        ));
        {
            let mut sep = b.separated(", ");
            sep.push_bind(tx.tenant());
            row.push_values(&mut sep);
        }
        b.push(format!(") RETURNING {}", columns::<T>()));
        Ok(b.build_query_as::<T>().fetch_one(&mut **tx).await?)
    }

    /// Replaces the row with `row.id()`; `false` when the tenant has no such row.
    pub async fn update(tx: &mut TenantTx, row: &T) -> Result<bool, TenancyError> {
        let mut b = QueryBuilder::new(format!("UPDATE {} SET ({}) = ROW(", T::TABLE, columns::<T>()));
        {
            let mut sep = b.separated(", ");
            row.push_values(&mut sep);
        }
        b.push(format!(") WHERE {} = ", id_column::<T>())).push_bind(row.id());
        Ok(b.build().execute(&mut **tx).await?.rows_affected() == 1)
    }

    /// The row with this id, if the tenant has it.
    pub async fn get(tx: &mut TenantTx, id: T::Id) -> Result<Option<T>, TenancyError> {
        let mut b = QueryBuilder::new(format!(
            "SELECT {} FROM {} WHERE {} = ",
            columns::<T>(),
            T::TABLE,
            id_column::<T>()
        ));
        b.push_bind(id);
        Ok(b.build_query_as::<T>().fetch_optional(&mut **tx).await?)
    }

    /// Up to `limit` rows (at most 1000) ordered by id, after `after` when given.
    pub async fn list(tx: &mut TenantTx, after: Option<T::Id>, limit: u32) -> Result<Vec<T>, TenancyError> {
        let id = id_column::<T>();
        let mut b = QueryBuilder::new(format!("SELECT {} FROM {}", columns::<T>(), T::TABLE));
        if let Some(after) = after {
            b.push(format!(" WHERE {id} > ")).push_bind(after);
        }
        b.push(format!(" ORDER BY {id} LIMIT "))
            .push_bind(i64::from(limit.clamp(1, 1000)));
        Ok(b.build_query_as::<T>().fetch_all(&mut **tx).await?)
    }

    /// Deletes the row with this id; `false` when the tenant has no such row.
    pub async fn delete(tx: &mut TenantTx, id: T::Id) -> Result<bool, TenancyError> {
        let mut b = QueryBuilder::new(format!("DELETE FROM {} WHERE {} = ", T::TABLE, id_column::<T>()));
        b.push_bind(id);
        Ok(b.build().execute(&mut **tx).await?.rows_affected() == 1)
    }

    /// How many rows the tenant has.
    pub async fn count(tx: &mut TenantTx) -> Result<i64, TenancyError> {
        let sql = format!("SELECT count(*) FROM {}", T::TABLE);
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut **tx)
            .await?)
    }
}
