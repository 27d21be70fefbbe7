//! `ferry deploy` and `ferry undeploy`: check a file as the host would,
//! move it into the plugins folder the safe way (or into the cluster's
//! bucket, from which every host takes it), and wait for the running host
//! to serve it (or to unload it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::check::load_and_start;
use super::client::{service_entry, watch_status};
use crate::config::Config;
use crate::deploy::Staged;
use crate::runtime::Runtime;

/// Where `ferry deploy` puts a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The plugins folder of this machine's host.
    Folder,
    /// The cluster's object store bucket.
    Cluster,
}

/// `ferry deploy`: checks the file (and its manifest) exactly as the host
/// will, compiling into the host's cache so the host loads it at once, then
/// moves it into the plugins folder and waits for the host to serve it.
pub async fn deploy(
    config: &Config,
    file: &Path,
    name: Option<String>,
    manifest: Option<PathBuf>,
    to: To,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    // Said before the file is compiled, so a config without a cluster
    // costs nothing.
    let cluster = match (to, &config.cluster) {
        (To::Folder, _) => None,
        (To::Cluster, Some(cluster)) => Some(cluster),
        (To::Cluster, None) => bail!("--cluster needs a `cluster` block in the config"),
    };
    let name = match name {
        Some(name) => name,
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("cannot take a service name from the file name; pass --name")?
            .to_owned(),
    };
    if !crate::core::names::valid_service_name(&name) {
        bail!(
            "`{name}` is not a service name: lowercase letters, digits, `-` and `_`; pass --name"
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let manifest = match manifest {
        Some(path) => Some(path),
        None => Some(file.with_extension("yaml")).filter(|p| p.is_file()),
    };
    let manifest_text = match &manifest {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let dest = config.plugins.join(format!("{name}.wasm"));
    // Without a manifest of its own, the service keeps the folder's.
    let effective_manifest = match &manifest_text {
        Some(text) => Some(text.clone()),
        None => std::fs::read_to_string(dest.with_extension("yaml")).ok(),
    };
    let settings = match crate::deploy::settings(
        manifest.as_deref().unwrap_or(&dest.with_extension("yaml")),
        effective_manifest.as_deref(),
        &config.defaults,
    ) {
        Ok(settings) => settings,
        Err(e) => {
            println!("refused: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let runtime = Arc::new(Runtime::new(
        Some(config.cache_dir()),
        config.max_instances,
        Default::default(),
    )?);
    let digest = crate::runtime::digest(&bytes);
    let plugin = match load_and_start(&runtime, &name, bytes.clone(), settings).await? {
        Ok((plugin, _)) => plugin,
        Err(why) => {
            println!("refused: {}: {why}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let version = plugin.version().to_owned();
    drop(plugin);
    let deployment = crate::deploy::deployment_id(&digest, effective_manifest.as_deref());

    let moved = std::time::Instant::now();
    let place = match cluster {
        Some(cluster) => {
            let client = crate::pipeline::cluster::client(cluster, false)
                .await
                .map_err(anyhow::Error::msg)?;
            let bucket = crate::deploy::cluster::bucket(&client, &cluster.bucket)
                .await
                .map_err(anyhow::Error::msg)?;
            crate::deploy::cluster::store(&bucket, &name, &bytes, manifest_text.as_deref())
                .await
                .map_err(anyhow::Error::msg)?;
            // The put is acknowledged by JetStream: what is stored stays.
            client.flush().await.ok();
            format!("the cluster's bucket `{}`", cluster.bucket)
        }
        None => {
            // Both files are written first and renamed one right after the
            // other, the manifest before the code, so the host takes them
            // in together.
            std::fs::create_dir_all(&config.plugins)
                .with_context(|| format!("cannot create {}", config.plugins.display()))?;
            let manifest = match &manifest_text {
                Some(text) => Some(Staged::write(
                    &dest.with_extension("yaml"),
                    text.as_bytes(),
                )?),
                None => None,
            };
            let code = Staged::write(&dest, &bytes)?;
            if let Some(manifest) = manifest {
                manifest.commit()?;
            }
            code.commit()?;
            config.plugins.display().to_string()
        }
    };
    if !wait {
        println!("deployed {name} (version {version}, deployment {deployment}) into {place}");
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = watch_status(
        &crate::doors::control::path(config),
        Duration::from_secs(120),
        "serving the new deployment",
        |status| {
            let entry = service_entry(status, &name)?;
            if entry["deployment"] == deployment.as_str() {
                return Some(Ok(()));
            }
            (entry["rejected"]["deployment"] == deployment.as_str()).then(|| {
                Err(entry["rejected"]["reason"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned())
            })
        },
    )
    .await?;
    match outcome {
        None => {
            println!(
                "deployed {name} (version {version}, deployment {deployment}) into {place}; no host is running here to serve it"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Ok(())) => {
            println!(
                "deployed {name} (version {version}, deployment {deployment}): serving after {} ms",
                moved.elapsed().as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(reason)) => {
            println!("the host refused {name} (version {version}): {reason}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `ferry undeploy`: removes the service's files from the plugins folder and
/// waits until a running host no longer serves it.
pub async fn undeploy(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    if !crate::core::names::valid_service_name(name) {
        bail!("`{name}` is not a service name");
    }
    let wasm = config.plugins.join(format!("{name}.wasm"));
    match std::fs::remove_file(&wasm) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no service `{name}` in {}", config.plugins.display());
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", wasm.display())),
    }
    let _ = std::fs::remove_file(wasm.with_extension("yaml"));
    watch_status(
        &crate::doors::control::path(config),
        Duration::from_secs(30),
        "unloading the service",
        |status| {
            let gone = service_entry(status, name).is_none_or(|s| s["state"] == "missing");
            gone.then_some(())
        },
    )
    .await?;
    println!("undeployed {name}");
    Ok(ExitCode::SUCCESS)
}
