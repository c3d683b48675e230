//! The manifests source: Services, EndpointSlices, Nodes and ServiceCIDRs
//! read from YAML or JSON files, the embedded default that needs no
//! cluster.
//!
//! A text holds one object, several YAML documents (`---`), a stream of JSON
//! objects, a `kind: List` as `kubectl get -o yaml` writes it, or a typed list
//! (`ServiceList`, `EndpointSliceList`) as the API returns it. Only `v1`
//! Services and Nodes, `discovery.k8s.io/v1` EndpointSlices and
//! `networking.k8s.io/v1` ServiceCIDRs are kept; other kinds are
//! ignored (a Knative `Service` of another API group too). Every object gets
//! its managed fields stripped and the namespace `default` when it names none.
//!
//! Errors carry the line and column the parser reports. Documents are read
//! as plain values (a key that a mapping repeats fails there, at its second
//! copy, in YAML and JSON alike), then converted to the real types; the conversion notes the
//! path it was at (keys and indices) when it failed, and only then the text is
//! read again, down that path, for the parser to place the error at the value.
//! The error is always the conversion's: the second read only finds where.
//!
//! YAML is read with `serde-saphyr` (the parser kube itself uses) within
//! budgets against hostile texts: 64 levels of nesting, 100,000 documents,
//! 8 million nodes and a bounded alias expansion per text, 64 MiB per file
//! ([`format`] holds the numbers).
//!
//! Parts: `parse` (documents, lists, kinds, the last definition), `format`
//! (YAML or JSON), `track` (the path of a failed conversion), `locate` (the
//! second read), `error` ([`ManifestError`]), `load` (files and folders) and
//! `watch` ([`run`]: inotify or polling, resyncs).

mod error;
mod format;
mod load;
mod locate;
mod parse;
#[cfg(test)]
mod tests;
mod track;
mod watch;

pub use error::ManifestError;
pub use load::load_path;
pub use parse::parse_manifests;
pub use watch::run;
