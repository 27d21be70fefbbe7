//! Deploying to a cluster: `ferry deploy --cluster` puts a checked
//! component (its manifest in the object's metadata, so the two travel as
//! one) into a JetStream object store bucket, and every host follows the
//! bucket, writing each new version into its own plugins folder. From
//! there the folder's usual rules apply: compiled and test-instantiated
//! before it takes over, a failure leaves the previous version serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::object_store::{
    Config as BucketConfig, ObjectInfo, ObjectMetadata, ObjectStore,
};
use futures_util::StreamExt as _;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use super::Staged;

/// The metadata key that holds an object's manifest.
const MANIFEST: &str = "manifest";

/// Largest component taken from the bucket.
const MAX_COMPONENT: usize = 256 * 1024 * 1024;

/// The bucket, created if it is not there yet.
pub async fn bucket(client: &async_nats::Client, name: &str) -> Result<ObjectStore, String> {
    let jetstream = crate::resources::work_queue::context(client.clone());
    if let Ok(store) = jetstream.get_object_store(name).await {
        return Ok(store);
    }
    jetstream
        .create_object_store(BucketConfig {
            bucket: name.to_owned(),
            description: Some("Ferry's components, deployed to the cluster".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            format!("cannot open the object store bucket `{name}` (is JetStream on?): {e}")
        })
}

/// Puts service `name`'s component (and its manifest, if it has one of its
/// own) into the bucket.
pub async fn store(
    bucket: &ObjectStore,
    name: &str,
    bytes: &[u8],
    manifest: Option<&str>,
) -> Result<(), String> {
    let mut meta = ObjectMetadata {
        name: name.to_owned(),
        description: Some(format!("service {name}")),
        ..Default::default()
    };
    if let Some(manifest) = manifest {
        meta.metadata.insert(MANIFEST.into(), manifest.to_owned());
    }
    let mut reader = bytes;
    bucket
        .put(meta, &mut reader)
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot store `{name}` in the cluster's bucket: {e}"))
}

/// Follows the bucket until `stop`: every version already there, then
/// every new one, is written into `plugins`. Comes back by itself after
/// NATS or JetStream was away.
pub async fn follow(
    client: async_nats::Client,
    bucket_name: String,
    plugins: PathBuf,
    stop: CancellationToken,
) {
    loop {
        match follow_once(&client, &bucket_name, &plugins, &stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                bucket = bucket_name,
                "not following the cluster's components: {e}; trying again"
            ),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn follow_once(
    client: &async_nats::Client,
    bucket_name: &str,
    plugins: &Path,
    stop: &CancellationToken,
) -> Result<(), String> {
    let store = bucket(client, bucket_name).await?;
    // The newest version of every object, then each change.
    let mut watch = store
        .watch_with_history()
        .await
        .map_err(|e| format!("cannot watch the bucket: {e}"))?;
    tracing::info!(bucket = bucket_name, "following the cluster's components");
    loop {
        let info = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            info = watch.next() => match info {
                Some(Ok(info)) => info,
                Some(Err(e)) => return Err(format!("the watch failed: {e}")),
                None => return Err("the watch ended".into()),
            },
        };
        if let Err(e) = take(&store, &info, plugins).await {
            tracing::warn!(
                bucket = bucket_name,
                object = info.name,
                "not taken from the cluster: {e}"
            );
        }
    }
}

/// Writes one object into the plugins folder, unless the folder has it.
async fn take(store: &ObjectStore, info: &ObjectInfo, plugins: &Path) -> Result<(), String> {
    // Removing a service stays a matter of each host's folder.
    if info.deleted {
        return Ok(());
    }
    let name = &info.name;
    if !crate::core::names::valid_service_name(name) {
        return Err("not a service name".into());
    }
    if info.size > MAX_COMPONENT {
        return Err(format!(
            "{} bytes is more than a component may be",
            info.size
        ));
    }
    let mut object = store
        .get(name)
        .await
        .map_err(|e| format!("cannot fetch it: {e}"))?;
    let mut bytes = Vec::with_capacity(info.size);
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot fetch it: {e}"))?;
    let manifest = info.metadata.get(MANIFEST).map(String::as_str);
    let dest = plugins.join(format!("{name}.wasm"));
    let yaml = dest.with_extension("yaml");
    let same_code = std::fs::read(&dest).is_ok_and(|b| b == bytes);
    let same_manifest =
        manifest.is_none_or(|m| std::fs::read_to_string(&yaml).is_ok_and(|y| y == m));
    if same_code && same_manifest {
        return Ok(());
    }
    std::fs::create_dir_all(plugins)
        .map_err(|e| format!("cannot create {}: {e}", plugins.display()))?;
    // As `ferry deploy` does: both written, then the manifest renamed just
    // before the code, so the host takes them in together.
    let written = (|| {
        let manifest = manifest
            .map(|m| Staged::write(&yaml, m.as_bytes()))
            .transpose()?;
        let code = Staged::write(&dest, &bytes)?;
        if let Some(manifest) = manifest {
            manifest.commit()?;
        }
        code.commit()
    })();
    written.map_err(|e| format!("{e:#}"))?;
    tracing::info!(
        service = name,
        bytes = bytes.len(),
        "took a new version from the cluster"
    );
    Ok(())
}
