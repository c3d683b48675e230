//! Placing an error in the text: the document is read again, down the path
//! where the conversion failed, for the parser to report the line and column.

use std::{cell::RefCell, fmt};

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_json::Value;

use super::{
    error::RawError,
    format::{Format, yaml_options},
    track::Step,
};

/// Reads document `index` of `text` again, down to `item` of its list and
/// then along `path`, and fails there with `message`, to get the parser's
/// located error. Where the text does not go on along the path, fails at
/// the deepest value reached. `None` when the document is not there.
pub(super) fn locate(
    text: &str,
    format: Format,
    index: usize,
    item: Option<usize>,
    path: &[Step],
    message: &str,
) -> Option<RawError> {
    let seed = Navigate {
        item,
        walk: Walk { path, message },
    };
    match format {
        Format::Yaml => {
            AIM.with_borrow_mut(|aim| {
                *aim = Some(Aim {
                    index,
                    next: 0,
                    item,
                    path: path.to_vec(),
                    message: message.to_owned(),
                });
            });
            let read = serde_saphyr::from_multiple_with_options::<Aimed>(text, yaml_options());
            AIM.with_borrow_mut(Option::take);
            let located = RawError::from_yaml(&read.err()?);
            // At the document itself the parser has no place to give: the
            // place is where the document's value starts.
            let start = || {
                let starts: Vec<serde_saphyr::Spanned<IgnoredAny>> =
                    serde_saphyr::from_multiple_with_options(text, yaml_options()).ok()?;
                Some(starts.get(index)?.referenced)
            };
            Some(located.or_at(start()))
        }
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            for _ in 0..index {
                IgnoredAny::deserialize(&mut de).ok()?;
            }
            seed.deserialize(&mut de)
                .err()
                .map(|e| RawError::from_json(&e))
        }
    }
}

thread_local! {
    /// What [`Aimed`] is to do: the YAML parser reads a stream of documents
    /// into a type, not through a seed, so the seed waits here.
    static AIM: RefCell<Option<Aim>> = const { RefCell::new(None) };
}

/// The document to read down, and what to read down it.
struct Aim {
    index: usize,
    /// The index of the next document read.
    next: usize,
    item: Option<usize>,
    path: Vec<Step>,
    message: String,
}

/// One document of a YAML stream: skipped, or, for the one [`AIM`] names,
/// read down its path to fail there.
struct Aimed;

impl<'de> Deserialize<'de> for Aimed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        AIM.with_borrow_mut(|aim| {
            let Some(aim) = aim.as_mut() else {
                return IgnoredAny::deserialize(deserializer).map(|_| Self);
            };
            let this = aim.next;
            aim.next += 1;
            if this != aim.index {
                return IgnoredAny::deserialize(deserializer).map(|_| Self);
            }
            Navigate {
                item: aim.item,
                walk: Walk {
                    path: &aim.path,
                    message: &aim.message,
                },
            }
            .deserialize(deserializer)
            .map(|()| Self)
        })
    }
}

/// Walks to the object the error is about: the document itself, or an item
/// of its list (`items` of a mapping, or an element of a bare array).
#[derive(Clone, Copy)]
struct Navigate<'a> {
    item: Option<usize>,
    walk: Walk<'a>,
}

impl<'de> DeserializeSeed<'de> for Navigate<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.item {
            None => self.walk.deserialize(deserializer),
            Some(_) => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Navigate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            if Some(index) == self.item {
                seq.next_element_seed(self.walk)?;
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(self.walk.message));
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Value>()? {
            if key.as_str() == Some("items") {
                map.next_value_seed(Items(self))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Err(de::Error::custom(self.walk.message))
    }
}

/// The `items` sequence of a list.
struct Items<'a>(Navigate<'a>);

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self.0)
    }
}

/// Follows `path` down from the value at hand, and fails at its end (or at
/// the deepest value reached) with `message`; the parser adds the place.
#[derive(Clone, Copy)]
struct Walk<'a> {
    path: &'a [Step],
    message: &'a str,
}

impl<'a> Walk<'a> {
    fn fail<E: de::Error, T>(self) -> Result<T, E> {
        Err(E::custom(self.message))
    }

    fn rest(self) -> Walk<'a> {
        Walk {
            path: self.path.get(1..).unwrap_or_default(),
            message: self.message,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! walk_fail {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, _: $ty) -> Result<(), E> {
            self.fail()
        }
    )*};
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }

    walk_fail! {
        visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_i128(i128),
        visit_u128(u128), visit_f64(f64), visit_str(&str), visit_bytes(&[u8]),
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.fail()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.fail()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(&Step::Element(index)) = self.path.first() else {
            return self.fail();
        };
        for _ in 0..index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return self.fail();
            }
        }
        seq.next_element_seed(self.rest())?;
        self.fail()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.path.first() {
            Some(Step::Value { index, key }) => {
                let mut at = 0;
                while let Some(found) = map.next_key::<Value>()? {
                    let here = match key {
                        Some(key) => found.as_str() == Some(key.as_str()),
                        None => at == *index,
                    };
                    if here {
                        map.next_value_seed(self.rest())?;
                        return self.fail();
                    }
                    map.next_value::<IgnoredAny>()?;
                    at += 1;
                }
                self.fail()
            }
            Some(&Step::Key(index)) => {
                for _ in 0..index {
                    if map.next_key::<IgnoredAny>()?.is_none() {
                        return self.fail();
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                map.next_key_seed(self.rest())?;
                self.fail()
            }
            _ => self.fail(),
        }
    }

    // A tagged value (`!tag {...}`): the conversion looks through the tag.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (_, variant) = data.variant::<IgnoredAny>()?;
        if self.path.is_empty() {
            return self.fail();
        }
        variant.newtype_variant_seed(self)
    }
}
