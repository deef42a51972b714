//! NATS operator mode (decentralized JWT auth) made on the spot: an operator, a system
//! account and one account for the fleet with JetStream on, the server configuration that
//! trusts them (`resolver: MEMORY`, both account JWTs preloaded), and user credentials files
//! signed by the fleet account, each with the [`Permissions`] a test gives.
//!
//! The JWTs are nats-io/jwt v2 claims built by hand: header `{"typ":"JWT","alg":"ed25519-nkey"}`,
//! claims `{jti, iat, iss, sub, name, nats: {type, version: 2, ...}}`, both base64url without
//! padding, signed (ed25519, by the issuer's nkey) over `header.claims`. An operator and its
//! accounts sign themselves and their users respectively; no signing keys, no expiry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{json, Value};

use super::permissions::Permissions;
use super::NatsConf;

/// An operator with a system account and one fleet account (JetStream unlimited).
pub struct Operator {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
    account_name: String,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("operator", &self.operator.public_key())
            .field("account", &self.account.public_key())
            .field("account_name", &self.account_name)
            .finish_non_exhaustive()
    }
}

/// No limit, in nats-io/jwt's limits.
const UNLIMITED: i64 = -1;

impl Operator {
    /// A new operator, its system account and the fleet account `account_name`.
    pub fn new(account_name: &str) -> Operator {
        Operator {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
            account_name: account_name.to_owned(),
        }
    }

    /// The server's configuration for operator mode: the operator JWT (the file
    /// `operator.jwt`), the system account, and a memory resolver preloaded with both account
    /// JWTs. Every client then needs a user JWT signed by a preloaded account.
    pub fn server_conf(&self) -> NatsConf {
        let operator_jwt = encode(
            &self.operator,
            &self.operator.public_key(),
            "cache-router test operator",
            json!({
                "type": "operator",
                "version": 2,
                "system_account": self.system.public_key(),
            }),
        );
        let system_jwt = encode(
            &self.operator,
            &self.system.public_key(),
            "SYS",
            json!({
                "type": "account",
                "version": 2,
                "limits": account_limits(false),
            }),
        );
        let account_jwt = encode(
            &self.operator,
            &self.account.public_key(),
            &self.account_name,
            json!({
                "type": "account",
                "version": 2,
                "limits": account_limits(true),
            }),
        );
        let text = format!(
            "operator: \"{{dir}}/operator.jwt\"\n\
             system_account: \"{sys}\"\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  \"{sys}\": \"{system_jwt}\"\n  \"{acc}\": \"{account_jwt}\"\n}}\n",
            sys = self.system.public_key(),
            acc = self.account.public_key(),
        );
        NatsConf::new(text).with_file("operator.jwt", operator_jwt)
    }

    /// A credentials file (`--nats-creds`) for a new user `name` of the fleet account: its
    /// JWT, carrying `permissions` and no other limit, then its nkey seed.
    pub fn user_creds(&self, name: &str, permissions: &Permissions) -> String {
        let user = KeyPair::new_user();
        let mut nats = permissions.to_jwt();
        nats["type"] = json!("user");
        nats["version"] = json!(2);
        for limit in ["subs", "data", "payload"] {
            nats[limit] = json!(UNLIMITED);
        }
        let jwt = encode(&self.account, &user.public_key(), name, nats);
        let seed = user.seed().expect("a user nkey has a seed");
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }
}

/// An account's limits: everything unlimited, JetStream (memory and file storage, streams,
/// consumers) only if `jetstream`.
fn account_limits(jetstream: bool) -> Value {
    let mut limits = json!({
        "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED,
        "imports": UNLIMITED, "exports": UNLIMITED, "wildcards": true,
        "conn": UNLIMITED, "leaf": UNLIMITED,
    });
    if jetstream {
        for limit in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[limit] = json!(UNLIMITED);
        }
    }
    limits
}

/// A JWT for `subject` with `nats` claims, issued and signed by `issuer`.
fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        // Any unique id: the server keeps it, never checks how it was made.
        "jti": format!("{subject}-{iat}-{}", SERIAL.fetch_add(1, Ordering::Relaxed)),
        "iat": iat,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let signature = issuer
        .sign(signing_input.as_bytes())
        .expect("an nkey with a seed signs");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}
