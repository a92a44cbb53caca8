//! The catalog in code made true at the provider ([`push`]), and the differences between
//! them reported ([`check`]).
//!
//! Each paid plan is a provider product (its key in the product's metadata `saas_plan`);
//! each price is a provider price carrying the catalog's lookup key. Provider prices
//! cannot change amount or interval, so a price whose terms changed in code gets a new
//! provider price that takes over the lookup key, and the old one is **archived** (still
//! billing the subscriptions on it, offered to nobody new). Nothing is ever deleted. A
//! price still active at the provider on one of the catalog's products but gone from the
//! code is archived too. Running `push` twice does nothing the second time.

use std::future::Future;

use crate::catalog::{Catalog, Charge, Interval, Plan, Price};
use crate::provider::ProviderError;

/// A product as the provider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderProduct {
    /// The provider's id (`prod_…`).
    pub id: String,
    /// The catalog plan it stands for (metadata `saas_plan`), if any.
    pub plan: Option<String>,
    /// Its name.
    pub name: String,
    /// Whether it is active.
    pub active: bool,
}

/// A price as the provider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPrice {
    /// The provider's id (`price_…`).
    pub id: String,
    /// Its product's id.
    pub product: String,
    /// Its lookup key, if any.
    pub lookup_key: Option<String>,
    /// Whether it is offered (archived prices still bill their subscriptions).
    pub active: bool,
    /// Lower-case ISO 4217.
    pub currency: String,
    /// Per unit, in minor units.
    pub unit_amount: Option<i64>,
    /// How often it bills (`None`: one-off).
    pub interval: Option<Interval>,
    /// What it charges for, as far as the provider says (`None`: not recorded).
    pub charge: Option<Charge>,
}

/// The calls [`push`] and [`check`] need from a provider.
pub trait CatalogProvider: Send + Sync {
    /// Every product.
    fn products(&self) -> impl Future<Output = Result<Vec<ProviderProduct>, ProviderError>> + Send;
    /// Every price, archived ones included.
    fn prices(&self) -> impl Future<Output = Result<Vec<ProviderPrice>, ProviderError>> + Send;
    /// Creates the product for `plan`.
    fn create_product(&self, plan: &Plan) -> impl Future<Output = Result<ProviderProduct, ProviderError>> + Send;
    /// Renames product `id`.
    fn rename_product(&self, id: &str, name: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Creates `price` on `product`; its lookup key moves to it from any other price.
    fn create_price(
        &self,
        product: &str,
        price: &Price,
        currency: &str,
    ) -> impl Future<Output = Result<ProviderPrice, ProviderError>> + Send;
    /// Archives price `id`: no new subscription can use it; existing ones keep it.
    fn archive_price(&self, id: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;
}

/// One difference between the code and the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatalogDrift {
    /// A paid plan has no product.
    MissingProduct {
        /// The plan.
        plan: String,
    },
    /// A product's name is not the plan's.
    ProductName {
        /// The plan.
        plan: String,
        /// The provider's name for it.
        provider: String,
        /// The code's.
        code: String,
    },
    /// No active price has the lookup key.
    MissingPrice {
        /// The lookup key.
        lookup_key: String,
    },
    /// The active price with the lookup key has other terms.
    PriceDiffers {
        /// The lookup key.
        lookup_key: String,
        /// The provider's price.
        price: String,
        /// What differs: `amount`, `currency`, `interval`, `charge`, `product`.
        fields: Vec<&'static str>,
    },
    /// An active price on one of the catalog's products that the code no longer has.
    NotInCode {
        /// The provider's price.
        price: String,
        /// Its lookup key, if any.
        lookup_key: Option<String>,
    },
}

/// What [`push`] changed at the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Products created, by plan.
    pub products_created: Vec<String>,
    /// Products renamed, by plan.
    pub products_renamed: Vec<String>,
    /// Prices created, by lookup key.
    pub prices_created: Vec<String>,
    /// Prices archived, by provider id.
    pub prices_archived: Vec<String>,
}

impl PushReport {
    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

fn differences(code: &Price, currency: &str, provider: &ProviderPrice, product: Option<&str>) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if provider.unit_amount != Some(code.amount()) {
        fields.push("amount");
    }
    if provider.currency != currency {
        fields.push("currency");
    }
    if provider.interval != Some(code.interval()) {
        fields.push("interval");
    }
    if provider.charge.as_ref().is_some_and(|c| c != code.charge()) {
        fields.push("charge");
    }
    if product.is_some_and(|p| p != provider.product) {
        fields.push("product");
    }
    fields
}

/// Every difference between `catalog` and the provider. Reads only.
pub async fn check<P: CatalogProvider + ?Sized>(
    catalog: &Catalog,
    provider: &P,
) -> Result<Vec<CatalogDrift>, ProviderError> {
    let (products, prices) = (provider.products().await?, provider.prices().await?);
    Ok(drift(catalog, &products, &prices))
}

fn drift(catalog: &Catalog, products: &[ProviderProduct], prices: &[ProviderPrice]) -> Vec<CatalogDrift> {
    let mut out = Vec::new();
    let product_of = |plan: &str| products.iter().find(|p| p.plan.as_deref() == Some(plan));
    for plan in catalog.plans().iter().filter(|p| !p.is_free()) {
        let product = product_of(plan.key());
        match product {
            None => out.push(CatalogDrift::MissingProduct {
                plan: plan.key().to_owned(),
            }),
            Some(p) if p.name != plan.display_name() => out.push(CatalogDrift::ProductName {
                plan: plan.key().to_owned(),
                provider: p.name.clone(),
                code: plan.display_name().to_owned(),
            }),
            Some(_) => {}
        }
        for price in plan.prices() {
            let live = prices
                .iter()
                .find(|p| p.active && p.lookup_key.as_deref() == Some(price.lookup_key()));
            match live {
                None => out.push(CatalogDrift::MissingPrice {
                    lookup_key: price.lookup_key().to_owned(),
                }),
                Some(p) => {
                    let fields = differences(price, catalog.currency(), p, product.map(|p| p.id.as_str()));
                    if !fields.is_empty() {
                        out.push(CatalogDrift::PriceDiffers {
                            lookup_key: price.lookup_key().to_owned(),
                            price: p.id.clone(),
                            fields,
                        });
                    }
                }
            }
        }
    }
    let ours: Vec<&str> = products
        .iter()
        .filter(|p| p.plan.is_some())
        .map(|p| p.id.as_str())
        .collect();
    for p in prices.iter().filter(|p| p.active && ours.contains(&p.product.as_str())) {
        let in_code = p.lookup_key.as_deref().and_then(|k| catalog.price(k)).is_some();
        if !in_code {
            out.push(CatalogDrift::NotInCode {
                price: p.id.clone(),
                lookup_key: p.lookup_key.clone(),
            });
        }
    }
    out
}

/// Makes the provider's products and prices match `catalog`: creates what is missing,
/// renames products, replaces prices whose terms changed (the new price takes the lookup
/// key, the old is archived) and archives active prices the code dropped. Idempotent.
pub async fn push<P: CatalogProvider + ?Sized>(catalog: &Catalog, provider: &P) -> Result<PushReport, ProviderError> {
    let mut report = PushReport::default();
    let mut products = provider.products().await?;
    let prices = provider.prices().await?;
    for d in drift(catalog, &products, &prices) {
        match d {
            CatalogDrift::MissingProduct { plan } => {
                if let Some(p) = catalog.plan_named(&plan) {
                    products.push(provider.create_product(p).await?);
                    report.products_created.push(plan);
                }
            }
            CatalogDrift::ProductName { plan, code, .. } => {
                if let Some(p) = products.iter().find(|p| p.plan.as_deref() == Some(plan.as_str())) {
                    provider.rename_product(&p.id, &code).await?;
                    report.products_renamed.push(plan);
                }
            }
            CatalogDrift::MissingPrice { lookup_key } | CatalogDrift::PriceDiffers { lookup_key, .. } => {
                let (Some(plan), Some(price)) = (catalog.plan_of_price(&lookup_key), catalog.price(&lookup_key)) else {
                    continue;
                };
                let Some(product) = products.iter().find(|p| p.plan.as_deref() == Some(plan.key())) else {
                    continue;
                };
                provider.create_price(&product.id, price, catalog.currency()).await?;
                report.prices_created.push(lookup_key.clone());
                // The key moved to the new price; archive the one that had it.
                for old in prices
                    .iter()
                    .filter(|p| p.active && p.lookup_key.as_deref() == Some(lookup_key.as_str()))
                {
                    provider.archive_price(&old.id).await?;
                    report.prices_archived.push(old.id.clone());
                }
            }
            CatalogDrift::NotInCode { price, .. } => {
                provider.archive_price(&price).await?;
                report.prices_archived.push(price);
            }
        }
    }
    if !report.is_empty() {
        tracing::info!(?report, "catalog pushed to the billing provider");
    }
    Ok(report)
}
