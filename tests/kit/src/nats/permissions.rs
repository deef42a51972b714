//! What one NATS user may do, written once and rendered both ways a server learns it: as the
//! `permissions` block of a user in a configuration file, and as the permission claims of a
//! user JWT (operator mode, [`super::jwt`]). A test that proves one rendering proves the same
//! subjects for the other.

use std::time::Duration;

use serde_json::json;

/// The subjects a user may publish to and subscribe to (nothing else: a list is an allow
/// list), and whether it may answer requests it received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// NATS' `allow_responses`: publishing to the reply subject of a request this user
    /// received, without a publish permission for it.
    pub responses: Option<Responses>,
}

/// How many replies a user may send to one request, and for how long after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Responses {
    pub max: u32,
    pub expires: Duration,
}

impl Permissions {
    /// The `permissions` value of a user in a nats-server configuration file:
    /// `{ publish: { allow: [...] }, subscribe: { allow: [...] }, allow_responses: {...} }`.
    pub fn to_conf(&self) -> String {
        let list = |subjects: &[String]| {
            let quoted: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut out = format!(
            "{{\n  publish: {{ allow: {} }}\n  subscribe: {{ allow: {} }}\n",
            list(&self.publish),
            list(&self.subscribe)
        );
        if let Some(r) = self.responses {
            out.push_str(&format!(
                "  allow_responses: {{ max: {}, expires: \"{}ms\" }}\n",
                r.max,
                r.expires.as_millis()
            ));
        }
        out.push('}');
        out
    }

    /// The permission fields of a user JWT's `nats` claims (nats-io/jwt v2): `pub`, `sub` and
    /// `resp` (its `ttl` in nanoseconds).
    pub fn to_jwt(&self) -> serde_json::Value {
        let mut v = json!({
            "pub": { "allow": self.publish },
            "sub": { "allow": self.subscribe },
        });
        if let Some(r) = self.responses {
            v["resp"] = json!({
                "max": r.max,
                "ttl": u64::try_from(r.expires.as_nanos()).unwrap_or(u64::MAX),
            });
        }
        v
    }
}
