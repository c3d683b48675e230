//! Following a deserialization down its path (keys and indices): to know
//! where the conversion of a plain value to a Kubernetes type failed, and to
//! read a document as a plain value that fails at the second copy of a key
//! its mapping repeats, where the parser places the error.

use std::{cell::RefCell, collections::HashSet, fmt};

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;

/// A step from an object down to one of its parts, as the conversion took it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Step {
    /// The value of a mapping's entry: the one with this key, or the
    /// `index`-th (0-based) when the key was not a string.
    Value { index: usize, key: Option<String> },
    /// The key of a mapping's `index`-th entry.
    Key(usize),
    /// An element of a sequence.
    Element(usize),
}

/// The path to the value being converted, as a chain up to the object.
enum Chain<'a> {
    Root,
    Child(&'a Chain<'a>, Step),
}

impl Chain<'_> {
    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut at = self;
        while let Chain::Child(parent, step) = at {
            steps.push(step.clone());
            at = parent;
        }
        steps.reverse();
        steps
    }
}

/// The path in the text form kubectl and the API server use:
/// `spec.ports[0].port`. A key step names no part: an error at a key is
/// shown at its mapping.
pub(super) fn path_text(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Value { key: Some(key), .. } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Value { index, key: None } => out.push_str(&format!("[{index}]")),
            Step::Element(index) => out.push_str(&format!("[{index}]")),
            Step::Key(_) => {}
        }
    }
    out
}

/// `message` behind the path it is about, when there is one.
pub(super) fn at_path(steps: &[Step], message: &str) -> String {
    match path_text(steps) {
        path if path.is_empty() => message.to_owned(),
        path => format!("{path}: {message}"),
    }
}

/// Converts a plain value to `T`; on failure, the error and the path to the
/// innermost value that failed.
pub(super) fn convert<'de, T: Deserialize<'de>>(
    value: &'de Value,
) -> Result<T, (serde_json::Error, Vec<Step>)> {
    let (result, failure) = tracked(value);
    result.map_err(|error| (error, failure.unwrap_or_default()))
}

/// Reads a YAML or JSON document as a plain value. A key that its mapping
/// already has is an error raised while that second copy is read, so the
/// parser places it there (`serde_json` would keep the last copy without a
/// word); the message names the mapping's path. A key that is not a string
/// (`5:` in YAML) is an error at that key: a Kubernetes object has none.
pub(super) fn read_value<'de, D: Deserializer<'de>>(de: D) -> Result<Value, D::Error> {
    tracked(de).0
}

/// Deserializes `T` from `de` through a [`Track`]; the path of the first
/// failure, if any.
fn tracked<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    de: D,
) -> (Result<T, D::Error>, Option<Vec<Step>>) {
    let failure = RefCell::new(None);
    let root = Chain::Root;
    let track = Track {
        de,
        at: At {
            chain: &root,
            failure: &failure,
            key: None,
        },
    };
    let result = T::deserialize(track);
    (result, failure.into_inner())
}

/// While a mapping key is read: the slot for it, and the keys read before.
#[derive(Clone, Copy)]
struct KeySlot<'a> {
    key: &'a RefCell<Option<String>>,
    seen: &'a HashSet<String>,
}

/// "duplicate entry with key K".
struct DuplicateKey<'a>(&'a str);

impl fmt::Display for DuplicateKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duplicate entry with key {:?}", self.0)
    }
}

/// Where a [`Track`] is: its path, the slot for the path of the first
/// failure, and, while a mapping key is read, the slot for that key.
#[derive(Clone, Copy)]
struct At<'a> {
    chain: &'a Chain<'a>,
    failure: &'a RefCell<Option<Vec<Step>>>,
    key: Option<KeySlot<'a>>,
}

impl At<'_> {
    /// Notes this path as the failure's, unless an inner one was noted.
    fn failed<E>(&self, error: E) -> E {
        let mut failure = self.failure.borrow_mut();
        if failure.is_none() {
            *failure = Some(self.chain.steps());
        }
        error
    }

    /// Notes the key being read; fails when its mapping has it already.
    fn capture<E: de::Error>(&self, key: &str) -> Result<(), E> {
        if let Some(slot) = self.key {
            if slot.seen.contains(key) {
                let duplicate = DuplicateKey(key).to_string();
                return Err(E::custom(at_path(&self.chain.steps(), &duplicate)));
            }
            *slot.key.borrow_mut() = Some(key.to_owned());
        }
        Ok(())
    }

    fn below(self) -> Self {
        Self { key: None, ..self }
    }
}

/// A deserializer that passes everything through to `de`, following the path.
struct Track<'a, D> {
    de: D,
    at: At<'a>,
}

macro_rules! track_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self $(, $arg: $ty)*, visitor: V) -> Result<V::Value, D::Error> {
            let at = self.at;
            self.de
                .$method($($arg,)* TrackVisitor { visitor, at })
                .map_err(|error| at.failed(error))
        }
    )*};
}

/// A string asked for where a mapping key is read: the parser is asked for
/// whatever is there, so that a key that is not a string (`5:` in YAML,
/// which a parser would hand over as text when asked for a string) reaches
/// the visitor as what it is, and is rejected.
macro_rules! track_key_string {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let at = self.at;
            let visitor = TrackVisitor { visitor, at };
            let result = if at.key.is_some() {
                self.de.deserialize_any(visitor)
            } else {
                self.de.$method(visitor)
            };
            result.map_err(|error| at.failed(error))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Track<'_, D> {
    type Error = D::Error;

    track_key_string! { deserialize_str, deserialize_string }

    track_deserialize! {
        deserialize_any(), deserialize_bool(), deserialize_i8(), deserialize_i16(),
        deserialize_i32(), deserialize_i64(), deserialize_i128(), deserialize_u8(),
        deserialize_u16(), deserialize_u32(), deserialize_u64(), deserialize_u128(),
        deserialize_f32(), deserialize_f64(), deserialize_char(),
        deserialize_bytes(), deserialize_byte_buf(),
        deserialize_option(), deserialize_unit(), deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str), deserialize_seq(),
        deserialize_tuple(len: usize), deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(), deserialize_ignored_any(),
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// The visitor of a [`Track`]: notes string keys, follows into sequences,
/// mappings and wrapped values.
struct TrackVisitor<'a, V> {
    visitor: V,
    at: At<'a>,
}

macro_rules! track_visit {
    ($($method:ident($ty:ty) $($key:ident)?),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            $(
                let $key: &str = v.as_ref();
                self.at.capture($key)?;
            )?
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for TrackVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    track_visit! {
        visit_bool(bool), visit_i8(i8), visit_i16(i16), visit_i32(i32), visit_i64(i64),
        visit_i128(i128), visit_u8(u8), visit_u16(u16), visit_u32(u32), visit_u64(u64),
        visit_u128(u128), visit_f32(f32), visit_f64(f64), visit_char(char),
        visit_str(&str) key, visit_borrowed_str(&'de str) key, visit_string(String) key,
        visit_bytes(&[u8]), visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let at = self.at;
        self.visitor.visit_some(Track { de, at })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let at = self.at;
        self.visitor.visit_newtype_struct(Track { de, at })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(TrackSeq {
            seq,
            at: self.at.below(),
            index: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(TrackMap {
            map,
            at: self.at.below(),
            entries: 0,
            key: None,
            seen: HashSet::new(),
        })
    }

    // Tagged values: errors inside are placed at the tagged value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

/// A seed that deserializes through a [`Track`] at `at`.
struct TrackSeed<'a, S> {
    seed: S,
    at: At<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for TrackSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Track { de, at: self.at })
    }
}

struct TrackSeq<'a, A> {
    seq: A,
    at: At<'a>,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for TrackSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let chain = Chain::Child(self.at.chain, Step::Element(self.index));
        self.index += 1;
        let at = At {
            chain: &chain,
            ..self.at
        };
        self.seq.next_element_seed(TrackSeed { seed, at })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct TrackMap<'a, A> {
    map: A,
    at: At<'a>,
    /// Keys read so far.
    entries: usize,
    /// The last key read, when it was a string.
    key: Option<String>,
    /// The string keys read so far.
    seen: HashSet<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TrackMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let chain = Chain::Child(self.at.chain, Step::Key(self.entries));
        let slot = RefCell::new(None);
        let at = At {
            chain: &chain,
            failure: self.at.failure,
            key: Some(KeySlot {
                key: &slot,
                seen: &self.seen,
            }),
        };
        let key = self.map.next_key_seed(TrackSeed { seed, at })?;
        self.entries += 1;
        self.key = slot.into_inner();
        if let Some(key) = &self.key {
            self.seen.insert(key.clone());
        }
        Ok(key)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let step = Step::Value {
            index: self.entries.saturating_sub(1),
            key: self.key.take(),
        };
        let chain = Chain::Child(self.at.chain, step);
        let at = At {
            chain: &chain,
            ..self.at
        };
        self.map.next_value_seed(TrackSeed { seed, at })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}
