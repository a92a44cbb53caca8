//! The evaluation context: who is asking, in which tenant, on which plan.

use std::net::IpAddr;

use saas_core::{TenantId, UserId};

/// A context field with a fixed slot. Every other name is a custom property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Field {
    /// `userId`
    UserId = 0,
    /// `sessionId`
    SessionId,
    /// `tenantId` (a custom property in Unleash terms)
    TenantId,
    /// `plan` (a custom property in Unleash terms)
    Plan,
    /// `role` (a custom property in Unleash terms)
    Role,
    /// `environment`
    Environment,
    /// `appName`
    AppName,
    /// `appVersion` (a custom property in Unleash terms)
    AppVersion,
    /// `remoteAddress`
    RemoteAddress,
    /// `currentTime` (RFC 3339; the clock's time when absent)
    CurrentTime,
}

pub(crate) const FIELD_COUNT: usize = 10;

impl Field {
    /// Every field, in slot order.
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::UserId,
        Field::SessionId,
        Field::TenantId,
        Field::Plan,
        Field::Role,
        Field::Environment,
        Field::AppName,
        Field::AppVersion,
        Field::RemoteAddress,
        Field::CurrentTime,
    ];

    /// The name used in constraints and stickiness.
    pub fn name(self) -> &'static str {
        match self {
            Field::UserId => "userId",
            Field::SessionId => "sessionId",
            Field::TenantId => "tenantId",
            Field::Plan => "plan",
            Field::Role => "role",
            Field::Environment => "environment",
            Field::AppName => "appName",
            Field::AppVersion => "appVersion",
            Field::RemoteAddress => "remoteAddress",
            Field::CurrentTime => "currentTime",
        }
    }

    /// The field called `name`, if it has a slot.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether Unleash has this field at the top level of its context (the others are
    /// properties there).
    pub fn is_unleash_builtin(self) -> bool {
        matches!(
            self,
            Field::UserId
                | Field::SessionId
                | Field::Environment
                | Field::AppName
                | Field::RemoteAddress
                | Field::CurrentTime
        )
    }
}

/// Everything a flag can be evaluated against. Build it once per request (the
/// [`FlagsLayer`](crate::FlagsLayer) does) and evaluate as many flags as needed: an
/// evaluation reads it and allocates nothing.
///
/// ```
/// use saas_flags::Context;
/// let ctx = Context::new()
///     .user_id("u-42")
///     .plan("pro")
///     .property("region", "eu-west");
/// assert_eq!(ctx.get("plan"), Some("pro"));
/// assert_eq!(ctx.get("region"), Some("eu-west"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    fields: [Option<Box<str>>; FIELD_COUNT],
    properties: Vec<(Box<str>, Box<str>)>,
    tenant: Option<TenantId>,
    remote_ip: Option<IpAddr>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field by slot.
    pub fn with(mut self, field: Field, value: impl Into<String>) -> Self {
        self.set(field, value);
        self
    }

    /// Sets a field by slot.
    pub fn set(&mut self, field: Field, value: impl Into<String>) {
        let value: String = value.into();
        match field {
            Field::RemoteAddress => self.remote_ip = value.parse().ok(),
            Field::TenantId => self.tenant = value.parse().ok(),
            _ => {}
        }
        self.fields[field as usize] = Some(value.into_boxed_str());
    }

    /// Sets the user id.
    pub fn user_id(self, id: impl Into<String>) -> Self {
        self.with(Field::UserId, id)
    }

    /// Sets the user from saas-core's id.
    pub fn user(self, id: UserId) -> Self {
        self.with(Field::UserId, id.to_string())
    }

    /// Sets the session id.
    pub fn session_id(self, id: impl Into<String>) -> Self {
        self.with(Field::SessionId, id)
    }

    /// Sets the tenant (used by tenant overrides and `tenantId` constraints).
    pub fn tenant(mut self, id: TenantId) -> Self {
        self.fields[Field::TenantId as usize] = Some(id.to_string().into_boxed_str());
        self.tenant = Some(id);
        self
    }

    /// Sets the plan (used by plan targeting and `plan` constraints).
    pub fn plan(self, plan: impl Into<String>) -> Self {
        self.with(Field::Plan, plan)
    }

    /// Sets the caller's role in the tenant.
    pub fn role(self, role: impl Into<String>) -> Self {
        self.with(Field::Role, role)
    }

    /// Sets the environment field (distinct from the environment a store compiles).
    pub fn environment(self, env: impl Into<String>) -> Self {
        self.with(Field::Environment, env)
    }

    /// Sets the application name.
    pub fn app_name(self, name: impl Into<String>) -> Self {
        self.with(Field::AppName, name)
    }

    /// Sets the application version (for `SEMVER_*` constraints).
    pub fn app_version(self, version: impl Into<String>) -> Self {
        self.with(Field::AppVersion, version)
    }

    /// Sets the remote address.
    pub fn remote_address(self, addr: impl Into<String>) -> Self {
        self.with(Field::RemoteAddress, addr)
    }

    /// Sets the remote address from a parsed IP.
    pub fn remote_ip(mut self, ip: IpAddr) -> Self {
        self.fields[Field::RemoteAddress as usize] = Some(ip.to_string().into_boxed_str());
        self.remote_ip = Some(ip);
        self
    }

    /// Sets the current time (RFC 3339) for `DATE_*` constraints; without it they use the clock.
    pub fn current_time(self, rfc3339: impl Into<String>) -> Self {
        self.with(Field::CurrentTime, rfc3339)
    }

    /// Sets a property; a name that has a slot (`userId`, `tenantId`, `plan`, …) sets the slot.
    pub fn property(mut self, name: impl AsRef<str>, value: impl Into<String>) -> Self {
        self.set_property(name.as_ref(), value);
        self
    }

    /// Sets a property in place; see [`Context::property`].
    pub fn set_property(&mut self, name: &str, value: impl Into<String>) {
        if let Some(field) = Field::from_name(name) {
            self.set(field, value);
            return;
        }
        let value = value.into().into_boxed_str();
        match self.properties.iter_mut().find(|(k, _)| &**k == name) {
            Some(slot) => slot.1 = value,
            None => self.properties.push((name.into(), value)),
        }
    }

    /// A field's value.
    #[inline]
    pub fn field(&self, field: Field) -> Option<&str> {
        self.fields[field as usize].as_deref()
    }

    /// A custom property's value.
    #[inline]
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.properties.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
    }

    /// A value by name, slot or property.
    pub fn get(&self, name: &str) -> Option<&str> {
        match Field::from_name(name) {
            Some(f) => self.field(f),
            None => self.prop(name),
        }
    }

    /// The tenant, when set.
    pub fn tenant_id(&self) -> Option<TenantId> {
        self.tenant
    }

    /// The remote address, when set and an IP.
    pub fn ip(&self) -> Option<IpAddr> {
        self.remote_ip
    }

    /// The custom properties.
    pub fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties.iter().map(|(k, v)| (&**k, &**v))
    }
}
