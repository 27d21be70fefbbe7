//! Files written into the plugins folder the safe way: under a hidden
//! name the watcher ignores, flushed, then renamed into place, so the host
//! only ever sees a file whole. `ferry deploy` and the cluster's bucket
//! both write through it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A file written under a hidden name in its destination's folder (which
/// the host ignores), flushed, and not yet renamed into place.
pub struct Staged {
    temporary: PathBuf,
    dest: PathBuf,
}

impl Staged {
    pub fn write(dest: &Path, bytes: &[u8]) -> anyhow::Result<Staged> {
        use std::io::Write;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin");
        let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let staged = Staged {
            temporary,
            dest: dest.to_owned(),
        };
        let mut file = std::fs::File::create(&staged.temporary)
            .with_context(|| format!("cannot write {}", staged.temporary.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", staged.temporary.display()))?;
        Ok(staged)
    }

    /// Renames the file into place: the host only ever sees it whole.
    pub fn commit(self) -> anyhow::Result<()> {
        std::fs::rename(&self.temporary, &self.dest)
            .with_context(|| format!("cannot move the file into place at {}", self.dest.display()))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}
