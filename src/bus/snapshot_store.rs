//! Router snapshots in the JetStream object store: one object, replaced on every write, that
//! any router of the fleet can start from.

use async_nats::jetstream::object_store::ObjectStore;
use tokio::io::AsyncReadExt;

use crate::BusError;
use cache_router_core::fleet::Snapshot;

/// Name of the snapshot object.
pub const SNAPSHOT_OBJECT: &str = "fleet-index";

/// Writes an encoded snapshot.
pub async fn save(store: &ObjectStore, bytes: &[u8]) -> Result<(), BusError> {
    let mut reader = bytes;
    store
        .put(SNAPSHOT_OBJECT, &mut reader)
        .await
        .map_err(|e| BusError::js("write snapshot", e))?;
    Ok(())
}

/// Reads the newest snapshot, if any. A snapshot that exists but cannot be read or decoded is
/// an error (the caller logs it and starts from the stream instead).
pub async fn load(store: &ObjectStore) -> Result<Option<Snapshot>, BusError> {
    let mut obj = match store.get(SNAPSHOT_OBJECT).await {
        Ok(o) => o,
        Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(BusError::js("read snapshot", e)),
    };
    let mut bytes = Vec::new();
    obj.read_to_end(&mut bytes)
        .await
        .map_err(|e| BusError::js("read snapshot body", e))?;
    Ok(Some(Snapshot::decode(&bytes)?))
}
