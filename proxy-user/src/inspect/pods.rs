//! `svcnat inspect pods`: the selector step on a manifests folder, per
//! Service the Pods it selected and why the others were not. Reads the
//! manifests, not the pins.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::Serialize;

use super::{InspectError, Row, View, service_parts, show};
use crate::sources::manifests::ManifestError;

/// One Pod of a Service's namespace, as the selector step saw it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PodRow {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Pod's name.
    pub pod: String,
    /// Whether it gives the Service an endpoint.
    pub selected: bool,
    /// Its endpoint's conditions (`ready`, `serving`, `terminating`), when
    /// selected.
    pub conditions: Vec<&'static str>,
    /// Why it is left out (or left out of a port).
    pub why: Vec<String>,
    /// The Pod's labels (`-l` matches them).
    pub labels: BTreeMap<String, String>,
}

impl Row for PodRow {
    const WHAT: &'static str = "pods";
    fn fields(&self) -> Vec<(&'static str, String)> {
        let (ns, name, _) = service_parts(&self.service);
        vec![
            ("namespace", ns.to_owned()),
            ("service", name.to_owned()),
            ("pod", self.pod.clone()),
            ("selected", self.selected.to_string()),
        ]
    }
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.labels)
    }
    const HEADERS: &'static [&'static str] = &["SERVICE", "POD", "SELECTED", "CONDITIONS", "WHY"];
    fn cells(&self) -> Vec<String> {
        let or_dash = |v: String| if v.is_empty() { "-".to_string() } else { v };
        vec![
            self.service.clone(),
            self.pod.clone(),
            if self.selected { "yes" } else { "no" }.to_string(),
            or_dash(self.conditions.join(",")),
            or_dash(self.why.join("; ")),
        ]
    }
}

/// The selector step on the manifests at `path` ([`crate::selector`]): a
/// row per Service with a selector and Pod of its namespace.
pub fn pods(path: &Path) -> Result<Vec<PodRow>, ManifestError> {
    use crate::sources::Object;
    let objects = crate::sources::manifests::load_path(path)?;
    let (mut services, mut pods, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    for o in objects {
        match o {
            Object::Service(s) => services.push(*s),
            Object::Pod(p) => pods.push(*p),
            Object::Node(n) => nodes.push(*n),
            Object::EndpointSlice(_) | Object::ServiceCidr(_) => {}
        }
    }
    let selection = crate::selector::derive(&services, &pods, &nodes);
    let labels: BTreeMap<(String, String), BTreeMap<String, String>> = pods
        .iter()
        .map(|p| {
            (
                (
                    p.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| crate::model::DEFAULT_NAMESPACE.to_owned()),
                    p.metadata.name.clone().unwrap_or_default(),
                ),
                p.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut rows = Vec::new();
    for (service, sel) in &selection.services {
        let names: BTreeSet<&String> = sel.pods.keys().chain(sel.left_out.keys()).collect();
        for pod in names {
            let conditions = sel.pods.get(pod).map_or_else(Vec::new, |&(r, s, t)| {
                [(r, "ready"), (s, "serving"), (t, "terminating")]
                    .into_iter()
                    .filter_map(|(on, name)| on.then_some(name))
                    .collect()
            });
            rows.push(PodRow {
                service: service.to_string(),
                pod: pod.clone(),
                selected: sel.pods.contains_key(pod),
                conditions,
                why: sel
                    .left_out
                    .get(pod)
                    .into_iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect(),
                labels: labels
                    .get(&(service.namespace.clone(), pod.clone()))
                    .cloned()
                    .unwrap_or_default(),
            });
        }
    }
    Ok(rows)
}

/// [`pods`] as `view` asks.
pub fn render_pods(path: &Path, view: &View) -> Result<String, InspectError> {
    Ok(show(&pods(path)?, view)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `svcnat inspect pods` on the tutorial's dump: which Pods the
    /// Service selected, their conditions, and why the others were not.
    #[test]
    fn pods_show_what_each_service_selected_and_why_not() {
        let dump =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("src/selector/testdata/bootcamp.yaml");
        let rows = pods(&dump).expect("the dump loads");
        let got: Vec<(String, bool, String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.pod.clone(),
                    r.selected,
                    r.conditions.join(","),
                    r.why.join("; "),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "bootcamp-warmup-7m2kd".into(),
                    false,
                    String::new(),
                    "finished (Succeeded)".into()
                ),
                (
                    "kubernetes-bootcamp-855d5cc575-6zw5x".into(),
                    true,
                    "ready,serving".into(),
                    String::new()
                ),
                (
                    "kubernetes-bootcamp-855d5cc575-q8v4r".into(),
                    true,
                    String::new(),
                    String::new()
                ),
            ]
        );
        assert!(
            rows.iter()
                .all(|r| r.service == "default/kubernetes-bootcamp")
        );
        let text = show(&rows, &View::default()).expect("text");
        assert!(text.starts_with("SERVICE"), "{text}");
        // -l matches the Pods' labels; --field-selector their fields.
        let view = |labels: &str, fields: &str| View {
            labels: super::super::parse_selector(labels, super::super::Syntax::Labels)
                .expect("labels"),
            fields: super::super::parse_selector(fields, super::super::Syntax::Fields)
                .expect("fields"),
            ..View::default()
        };
        let shown = |v: &View| -> Vec<String> {
            show(&rows, v)
                .expect("shown")
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
                .collect()
        };
        assert_eq!(shown(&view("app=kubernetes-bootcamp", "")).len(), 3);
        assert_eq!(
            shown(&view("app=kubernetes-bootcamp", "selected=true")),
            [
                "kubernetes-bootcamp-855d5cc575-6zw5x",
                "kubernetes-bootcamp-855d5cc575-q8v4r"
            ]
        );
        assert!(shown(&view("app notin (kubernetes-bootcamp)", "selected=true")).is_empty());
        assert_eq!(shown(&view("", "")).len(), rows.len());
    }
}
