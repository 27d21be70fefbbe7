//! `ferry:plugin/config`: the plain values of a plugin's manifest `config`
//! map, read-only. One map per loaded version, shared by its instances.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bindings::ConfigHost;

/// Per-store state of the config interface.
pub struct PluginConfig {
    values: Arc<BTreeMap<String, String>>,
}

impl PluginConfig {
    pub fn new(values: Arc<BTreeMap<String, String>>) -> Self {
        PluginConfig { values }
    }
}

impl ConfigHost for PluginConfig {
    fn get(&mut self, key: String) -> Option<String> {
        self.values.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
