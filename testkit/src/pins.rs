//! A bpffs pin folder for one test: a unique name under `/sys/fs/bpf`,
//! emptied before use and removed (with every program, link and pin svcnat
//! put there) when the test ends, also on panic.

use std::path::PathBuf;

use svcnat::dataplane::{Dataplane, DataplaneConfig, MapSizes, cleanup};

use crate::netns::unique_tag;

/// A pin folder removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/svcnat-test-TAG-UNIQUE`, emptied.
    pub fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/svcnat-test-{tag}-{}", unique_tag()));
        let _ = cleanup(&dir);
        Self(dir)
    }

    /// A dataplane configuration for this folder.
    pub fn config(&self, sizes: MapSizes) -> DataplaneConfig {
        DataplaneConfig {
            bpffs: self.0.clone(),
            sizes,
        }
    }

    /// The dataplane opened (or adopted) in this folder.
    pub fn open(&self, sizes: MapSizes) -> Dataplane {
        Dataplane::open(&self.config(sizes)).expect("open the dataplane")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = cleanup(&self.0);
    }
}
