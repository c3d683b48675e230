//! Reading manifests from a file, or from every manifest file under a folder.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::{
    error::ManifestError,
    format::{Format, MAX_FILE_BYTES},
    parse::{dedupe, parse_text},
};
use crate::sources::Object;

/// Reads a file, or every `*.yaml`, `*.yml` and `*.json` file under a folder
/// (recursively, in path order; names starting with `.` are skipped, which
/// also skips the `..data` copies of a mounted ConfigMap).
///
/// A file given by name is read whatever its extension (JSON when it ends in
/// `.json` or starts with `{` or `[`). Returns the objects as
/// [`parse_manifests`](super::parse_manifests) does, duplicates across files
/// resolved to the last one in path order.
///
/// # Errors
///
/// [`ManifestError::Io`] naming the path that cannot be listed or read, or
/// [`ManifestError::Parse`] naming the file and the parser's line, for the
/// first bad file in path order.
pub fn load_path(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let files = list_files(path)?;
    let mut all = Vec::new();
    for file in &files {
        let text = read_text(file)?;
        let parsed =
            parse_text(&text, Format::of(file, &text)).map_err(|e| e.in_file(Some(file)))?;
        all.extend(parsed.into_iter().map(|p| (p, Some(file.as_path()))));
    }
    Ok(dedupe(all.into_iter()))
}

/// A file's text, when it is no larger than [`MAX_FILE_BYTES`]: a bigger
/// one is not read at all (nor held in memory past the limit).
fn read_text(file: &Path) -> Result<String, ManifestError> {
    use std::io::Read as _;
    let io_error = |source| ManifestError::Io {
        path: file.to_path_buf(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(io_error)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ManifestError::Parse {
            path: Some(file.to_path_buf()),
            line: None,
            column: None,
            message: format!(
                "larger than {} MiB, the most a manifest file may hold; not read",
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    Ok(text)
}

/// The files to read for `path`, sorted by path.
pub(super) fn list_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut visited = BTreeSet::new();
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        // A symbolic link back up the tree must not loop forever.
        let real = std::fs::canonicalize(&folder).map_err(io_error(&folder))?;
        if !visited.insert(real) {
            continue;
        }
        for entry in std::fs::read_dir(&folder).map_err(io_error(&folder))? {
            let entry = entry.map_err(io_error(&folder))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let entry_path = entry.path();
            let meta = std::fs::metadata(&entry_path).map_err(io_error(&entry_path))?;
            if meta.is_dir() {
                folders.push(entry_path);
            } else if is_manifest_name(&entry_path) {
                files.push(entry_path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn is_manifest_name(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or_default();
    ["yaml", "yml", "json"]
        .iter()
        .any(|known| ext.eq_ignore_ascii_case(known))
}
