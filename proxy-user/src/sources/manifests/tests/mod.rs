//! Tests of the manifests source, one file per part, and the helpers they
//! share.

mod hostile;
mod load;
mod locate;
mod parse;
mod watch;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::SystemTime,
};

use k8s_openapi::api::core::v1::Service;

use super::{parse::object_key, parse_manifests};
use crate::sources::{Kind, Object};

/// A folder under the system temp folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "svcnat-manifests-{tag}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self(path)
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ignored = std::fs::remove_dir_all(&self.0);
    }
}

fn parse(text: &str) -> Vec<Object> {
    parse_manifests(text).unwrap_or_else(|e| panic!("unexpected error: {e}\n{text}"))
}

/// (kind, namespace, name) of each object.
fn keys(objects: &[Object]) -> Vec<(Kind, String, String)> {
    objects.iter().map(object_key).collect()
}

fn key(kind: Kind, namespace: &str, name: &str) -> (Kind, String, String) {
    (kind, namespace.to_owned(), name.to_owned())
}

fn service_of(object: &Object) -> &Service {
    match object {
        Object::Service(svc) => svc,
        _ => panic!("expected a Service, got {object:?}"),
    }
}
