//! Reading a text: its documents, the objects in them (single objects, lists
//! and bare arrays), which kinds are kept, and the last definition of an
//! object defined twice.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use serde::de::{Deserialize, Deserializer};
use serde_json::Value;

use super::{
    error::{ManifestError, RawError},
    format::{Format, yaml_options},
    locate::locate,
    track::{Step, at_path, convert, read_value},
};
use crate::{
    model::DEFAULT_NAMESPACE,
    sources::{Kind, Object},
};

/// The kinds of objects this source keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Service,
    EndpointSlice,
    Node,
    Pod,
    ServiceCidr,
}

impl Target {
    /// The target for an `apiVersion` and `kind`; `None` for other kinds.
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("v1", "Service") => Some(Self::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Self::EndpointSlice),
            ("v1", "Node") => Some(Self::Node),
            ("v1", "Pod") => Some(Self::Pod),
            ("networking.k8s.io/v1", "ServiceCIDR") => Some(Self::ServiceCidr),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
            Self::Pod => "Pod",
            Self::ServiceCidr => "ServiceCIDR",
        }
    }
}

/// An object of a document, still as a plain value.
struct Pending {
    /// Index in the document's `items`, for lists.
    item: Option<usize>,
    /// Where the object is in its document: nowhere for a single object,
    /// `items[N]` in a list, `[N]` in a bare array.
    at: Vec<Step>,
    target: Target,
    value: Value,
}

/// An object read from a text, with where it came from.
pub(super) struct Parsed {
    object: Object,
    /// 1-based index of the document in its text.
    document: usize,
    item: Option<usize>,
}

/// Something wrong with a document's shape, at the document or an item.
struct ShapeError {
    item: Option<usize>,
    at: Vec<Step>,
    message: String,
}

/// Parses one YAML or JSON text: multi-document YAML (`---`), a stream of
/// JSON objects, a single object, or a list (`kind: List` as `kubectl get -o
/// yaml` writes it, `ServiceList` / `EndpointSliceList` as the API returns
/// them, or a bare array) of Services, EndpointSlices, Nodes and
/// ServiceCIDRs.
///
/// JSON is recognised by a leading `{` or `[`. Other kinds are ignored. An
/// object defined twice keeps the last definition (with a warning). Returns the
/// objects sorted by kind, namespace and name, managed fields stripped and
/// namespace defaulted.
///
/// # Errors
///
/// [`ManifestError::Parse`] with the parser's line and column (1-based) when
/// the text is not YAML/JSON, a mapping repeats a key (in any document, named
/// and placed at the second copy), a document is not an object or lacks
/// `kind` or `apiVersion`, a Service or EndpointSlice does not match its
/// schema, or has no name. Nothing is returned then: a half-read text is never
/// used.
pub fn parse_manifests(text: &str) -> Result<Vec<Object>, ManifestError> {
    let parsed = parse_text(text, Format::sniff(text)).map_err(|e| e.in_file(None))?;
    Ok(dedupe(parsed.into_iter().map(|p| (p, None))))
}

/// Keeps the last definition of each object and warns about the others.
/// Returns the objects sorted by kind, namespace and name.
pub(super) fn dedupe<'p>(parsed: impl Iterator<Item = (Parsed, Option<&'p Path>)>) -> Vec<Object> {
    let mut by_key: BTreeMap<(Kind, String, String), (Object, String)> = BTreeMap::new();
    for (parsed, path) in parsed {
        let origin = origin(path, &parsed);
        let key = object_key(&parsed.object);
        if let Some((_, earlier)) = by_key.insert(key.clone(), (parsed.object, origin.clone())) {
            tracing::warn!(
                kind = ?key.0,
                object = %format_args!("{}/{}", key.1, key.2),
                kept = %origin,
                replaced = %earlier,
                "object defined twice in the manifests, keeping the last definition"
            );
        }
    }
    by_key.into_values().map(|(object, _)| object).collect()
}

/// "path document N item M", for messages.
fn origin(path: Option<&Path>, parsed: &Parsed) -> String {
    let file = path.map_or_else(|| "manifest".to_owned(), |p| p.display().to_string());
    match parsed.item {
        Some(item) => format!("{file} document {} item {item}", parsed.document),
        None => format!("{file} document {}", parsed.document),
    }
}

pub(super) fn object_key(object: &Object) -> (Kind, String, String) {
    let meta = object.meta();
    (
        object.kind(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Parses every document of a text. Errors are placed in the text.
pub(super) fn parse_text(text: &str, format: Format) -> Result<Vec<Parsed>, RawError> {
    let mut out = Vec::new();
    match format {
        Format::Yaml => {
            // Empty and null documents are left out, here and in `locate`.
            let documents: Vec<Document> =
                serde_saphyr::from_multiple_with_options(text, yaml_options())
                    .map_err(|e| RawError::from_yaml(&e))?;
            for (index, Document(value)) in documents.into_iter().enumerate() {
                parse_document(text, format, index, value, &mut out)?;
            }
        }
        Format::Json => {
            let stream = serde_json::Deserializer::from_str(text).into_iter::<Document>();
            for (index, document) in stream.enumerate() {
                let Document(value) = document.map_err(|e| RawError::from_json(&e))?;
                parse_document(text, format, index, value, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// One document of a YAML or JSON stream, read as [`read_value`] reads it.
struct Document(Value);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        read_value(deserializer).map(Self)
    }
}

/// Converts the objects of document `index` (0-based) of `text`.
fn parse_document(
    text: &str,
    format: Format,
    index: usize,
    value: Value,
    out: &mut Vec<Parsed>,
) -> Result<(), RawError> {
    let document = index + 1;
    let fail_at = |item: Option<usize>, at: &[Step], message: String| {
        let message = at_path(at, &message);
        locate(text, format, index, item, &[], &message)
            .unwrap_or_else(|| RawError::unlocated(format!("document {document}: {message}")))
    };
    let pending = shape(value).map_err(|e| fail_at(e.item, &e.at, e.message))?;
    for Pending {
        item,
        at,
        target,
        value,
    } in pending
    {
        let converted = match target {
            Target::Service => convert::<Service>(&value).map(|s| Object::Service(Box::new(s))),
            Target::EndpointSlice => {
                convert::<EndpointSlice>(&value).map(|s| Object::EndpointSlice(Box::new(s)))
            }
            Target::Node => convert::<Node>(&value).map(|n| Object::Node(Box::new(n))),
            Target::Pod => convert::<Pod>(&value).map(|p| Object::Pod(Box::new(p))),
            Target::ServiceCidr => {
                convert::<ServiceCIDR>(&value).map(|c| Object::ServiceCidr(Box::new(c)))
            }
        };
        let mut object = converted.map_err(|(error, path)| {
            let message = at_path(&[at.as_slice(), &path].concat(), &error.to_string());
            locate(text, format, index, item, &path, &message).unwrap_or_else(|| {
                RawError::unlocated(format!("document {document}: {} {message}", target.name()))
            })
        })?;
        let namespaced = !matches!(target, Target::Node | Target::ServiceCidr);
        let meta = object.meta_mut();
        if meta.name.as_deref().unwrap_or_default().is_empty() {
            return Err(fail_at(
                item,
                &at,
                format!("{} without metadata.name", target.name()),
            ));
        }
        meta.managed_fields = None;
        if !namespaced {
            meta.namespace = None;
        } else if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
        out.push(Parsed {
            object,
            document,
            item,
        });
    }
    Ok(())
}

/// Finds the objects of a document: a single object, a list's items, or a bare
/// array's elements. Other kinds are left out.
fn shape(value: Value) -> Result<Vec<Pending>, ShapeError> {
    let mut out = Vec::new();
    match value {
        Value::Null => {}
        Value::Array(items) => {
            for (index, item) in items.into_iter().enumerate() {
                let at = vec![Step::Element(index)];
                shape_item(item, Some(index), at, None, &mut out)?;
            }
        }
        Value::Object(mut map) => {
            let kind = map
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let is_list = kind == "List" || (kind.ends_with("List") && map.contains_key("items"));
            if !is_list {
                shape_item(Value::Object(map), None, Vec::new(), None, &mut out)?;
                return Ok(out);
            }
            // Items of a typed list (ServiceList) may omit apiVersion and kind.
            let api_version = map
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let default = kind
                .strip_suffix("List")
                .filter(|item_kind| !item_kind.is_empty())
                .map(|item_kind| (api_version.to_owned(), item_kind.to_owned()));
            match map.remove("items") {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for (index, item) in items.into_iter().enumerate() {
                        let at = vec![
                            Step::Value {
                                index: 0,
                                key: Some("items".to_owned()),
                            },
                            Step::Element(index),
                        ];
                        shape_item(item, Some(index), at, default.as_ref(), &mut out)?;
                    }
                }
                Some(_) => {
                    return Err(ShapeError {
                        item: None,
                        at: Vec::new(),
                        message: "`items` of a list is not a sequence".to_owned(),
                    });
                }
            }
        }
        other => {
            return Err(ShapeError {
                item: None,
                at: Vec::new(),
                message: format!("expected a Kubernetes object, found {}", value_type(&other)),
            });
        }
    }
    Ok(out)
}

/// One object (or list item): kept when it is a Service, an EndpointSlice,
/// a Node or a ServiceCIDR.
fn shape_item(
    value: Value,
    item: Option<usize>,
    at: Vec<Step>,
    default: Option<&(String, String)>,
    out: &mut Vec<Pending>,
) -> Result<(), ShapeError> {
    let Value::Object(map) = &value else {
        return Err(ShapeError {
            item,
            at,
            message: format!("expected a Kubernetes object, found {}", value_type(&value)),
        });
    };
    let field = |name: &str, default: Option<&str>| {
        map.get(name)
            .and_then(Value::as_str)
            .or(default)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let Some(kind) = field("kind", default.map(|d| d.1.as_str())) else {
        return Err(ShapeError {
            item,
            at,
            message: "the object has no `kind`".to_owned(),
        });
    };
    let Some(api_version) = field("apiVersion", default.map(|d| d.0.as_str())) else {
        return Err(ShapeError {
            item,
            at,
            message: format!("the {kind} has no `apiVersion`"),
        });
    };
    match Target::of(&api_version, &kind) {
        Some(target) => out.push(Pending {
            item,
            at,
            target,
            value,
        }),
        None => tracing::debug!(%api_version, %kind, "ignoring an object of another kind"),
    }
    Ok(())
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}
