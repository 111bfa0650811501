//! Raw feature values: what serving saw, exactly, before any transform.

use std::{borrow::Cow, fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser::SerializeMap as _};

/// One raw value: a string, a number, or explicitly missing (`null`).
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// A categorical value. Shared (`Arc`) so that a producer holding the same category for
    /// many records copies a pointer, not the text.
    Str(Arc<str>),
    /// A numeric value. JSON cannot carry NaN or infinities, but values computed in-process can
    /// be non-finite; the transforms treat those as missing.
    Num(f64),
    /// Known to be missing.
    Missing,
}

impl From<&str> for RawValue {
    fn from(s: &str) -> Self {
        Self::Str(s.into())
    }
}

impl From<String> for RawValue {
    fn from(s: String) -> Self {
        Self::Str(s.into())
    }
}

impl From<Arc<str>> for RawValue {
    fn from(s: Arc<str>) -> Self {
        Self::Str(s)
    }
}

impl From<f64> for RawValue {
    fn from(x: f64) -> Self {
        Self::Num(x)
    }
}

/// Raw features by name: a small map kept as a vector sorted by name. Sorted, so that encoding
/// is deterministic byte for byte; a vector, because records have a few dozen entries and are
/// built once per impression, where a tree's node allocations cost more than a binary search
/// saves. Names are `Cow` so that producers with fixed names (serving, the world) build records
/// without allocating a string per name; decoded records share theirs
/// through `intern`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawFeatures {
    entries: Vec<(Cow<'static, str>, RawValue)>,
}

/// A raw input as the transforms ask for it: its name, and its place among the transformer's
/// inputs (`Transformer::inputs`, sorted), for views that resolved the names beforehand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input<'a> {
    pub name: &'a str,
    pub index: usize,
}

/// Read access to raw values: one record (by name), or a view over several (what the transforms
/// read, so serving can score a candidate from its layers without copying them into one record).
pub trait Lookup {
    fn get(&self, input: Input<'_>) -> Option<&RawValue>;
}

impl Lookup for RawFeatures {
    fn get(&self, input: Input<'_>) -> Option<&RawValue> {
        RawFeatures::get(self, input.name)
    }
}

impl RawFeatures {
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_ref().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.position(name).ok().map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets `name`, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<Cow<'static, str>>, value: RawValue) -> Option<RawValue> {
        let name = name.into();
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (name, value));
                None
            }
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<RawValue> {
        self.position(name).ok().map(|i| self.entries.remove(i).1)
    }

    /// Sets every entry of `other` (replacing equal names); names stay borrowed where they were,
    /// so merging records of fixed names allocates no strings.
    pub fn merge(&mut self, other: &RawFeatures) {
        for (name, value) in &other.entries {
            self.insert(name.clone(), value.clone());
        }
    }

    /// The value of each of `names` (sorted, distinct) in one walk over both lists, into
    /// `out` (cleared first): how a view resolves a layer once instead of searching it per read.
    pub fn resolve_into<'a>(&'a self, names: &[String], out: &mut Vec<Option<&'a RawValue>>) {
        out.clear();
        let mut entries = self.entries.iter().peekable();
        for name in names {
            while entries.next_if(|(k, _)| k.as_ref() < name.as_str()).is_some() {}
            out.push(entries.next_if(|(k, _)| k.as_ref() == name.as_str()).map(|(_, v)| v));
        }
    }

    /// Names in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries already in name order, each name once (a record built from a precomputed
    /// layout): no comparisons.
    pub fn from_sorted(entries: Vec<(Cow<'static, str>, RawValue)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "entries out of order");
        Self { entries }
    }

    /// Sorts by name; of repeated names the last wins (as in a JSON object read by serde).
    fn from_unsorted(mut entries: Vec<(Cow<'static, str>, RawValue)>) -> Self {
        // Producers usually list names in order already: then there is nothing to do.
        if entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Self { entries };
        }
        // Stable, so that among equal names the original order survives and the last is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // In place: of equal neighbours the kept (earlier) slot takes the later value.
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        Self { entries }
    }
}

impl<const N: usize> From<[(Cow<'static, str>, RawValue); N]> for RawFeatures {
    fn from(entries: [(Cow<'static, str>, RawValue); N]) -> Self {
        Self::from_unsorted(entries.into())
    }
}

impl FromIterator<(Cow<'static, str>, RawValue)> for RawFeatures {
    fn from_iter<I: IntoIterator<Item = (Cow<'static, str>, RawValue)>>(iter: I) -> Self {
        Self::from_unsorted(iter.into_iter().collect())
    }
}

impl Serialize for RawFeatures {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in &self.entries {
            map.serialize_entry(name.as_ref(), value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RawFeatures {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawFeaturesVisitor)
    }
}

struct RawFeaturesVisitor;

impl<'de> de::Visitor<'de> for RawFeaturesVisitor {
    type Value = RawFeatures;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of raw feature values")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawFeatures, A::Error> {
        // JSON gives no length: room for an impression's couple of dozen entries at once
        // (grown from nothing, the vector was reallocated three times per record).
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(32));
        while let Some(name) = map.next_key_seed(NameSeed { position: entries.len() })? {
            entries.push((name, map.next_value()?));
        }
        Ok(RawFeatures::from_unsorted(entries))
    }
}

impl Serialize for RawValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Str(s) => serializer.serialize_str(s),
            Self::Num(x) if x.is_finite() => serializer.serialize_f64(*x),
            // JSON has no NaN: a non-finite number is logged as missing, which is what the
            // transforms make of it anyway.
            Self::Num(_) | Self::Missing => serializer.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

/// A feature name, shared with every other record that names it (see `intern`), and its
/// position in its record.
struct NameSeed {
    position: usize,
}

impl<'de> de::DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'static, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl de::Visitor<'_> for NameSeed {
    type Value = Cow<'static, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a feature name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(super::intern::name(self.position, v))
    }
}

struct RawValueVisitor;

impl de::Visitor<'_> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a number or null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Str(super::intern::value(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Num(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Num(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::Num(v as f64))
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Missing)
    }

    fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Missing)
    }
}
