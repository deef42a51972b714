//! Names of every subject, stream, bucket and store one fleet uses on NATS (see the crate docs).

use cache_router_core::protocol::WorkerId;

/// Names of everything one fleet uses on NATS.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    pub fn events(&self, w: &WorkerId) -> String {
        format!("{}.events.{}", self.prefix, w)
    }

    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    pub fn load(&self, w: &WorkerId) -> String {
        format!("{}.load.{}", self.prefix, w)
    }

    pub fn load_all(&self) -> String {
        format!("{}.load.*", self.prefix)
    }

    /// A router's in-flight report (core NATS): `<prefix>.router-load.<router>`.
    pub fn router_load(&self, router: &WorkerId) -> String {
        format!("{}.router-load.{}", self.prefix, router)
    }

    pub fn router_load_all(&self) -> String {
        format!("{}.router-load.*", self.prefix)
    }

    pub fn sync(&self, w: &WorkerId) -> String {
        format!("{}.sync.{}", self.prefix, w)
    }

    /// Stream names may not contain '.', so the prefix is upper-cased with a suffix.
    pub fn stream(&self) -> String {
        format!("{}_EVENTS", self.prefix.to_uppercase())
    }

    pub fn registry_bucket(&self) -> String {
        format!("{}-workers", self.prefix)
    }

    pub fn snapshot_store(&self) -> String {
        format!("{}-snapshots", self.prefix)
    }
}
