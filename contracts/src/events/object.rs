//! Structs read from JSON objects only.
//!
//! serde's derived `Deserialize` also reads a struct from a JSON array of its fields in order,
//! so `["c-1","imp-1",1,"u","a","adv"]` would pass as a click. The documents (`docs/events.md`,
//! `serving/openapi.json`) say objects, and a positional array is almost always a producer's
//! bug, so every contract type is read through [`Object`], which asks the parser for a map and
//! nothing else.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{self, value::MapAccessDeserializer},
};

/// `T`, read only from a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> de::Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        // The derived code reads its fields from the map it was given, as it would have.
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// For `#[serde(deserialize_with)]` on a struct-typed field: the field must be an object.
pub fn one<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Object::deserialize(deserializer).map(|o| o.0)
}

/// For `#[serde(deserialize_with)]` on a `Vec` of structs: every element must be an object.
pub fn many<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    // `Object<T>` has `T`'s layout, so this collect reuses the vector's buffer.
    Vec::<Object<T>>::deserialize(deserializer).map(|v| v.into_iter().map(|o| o.0).collect())
}

/// `serde_json::from_slice` for a struct that must be a JSON object.
pub fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    serde_json::from_slice::<Object<T>>(bytes).map(|o| o.0)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(deserialize_with = "one")]
        inner: Inner,
        #[serde(deserialize_with = "many")]
        list: Vec<Inner>,
    }

    #[test]
    fn objects_pass_and_arrays_are_refused_at_every_level() {
        let good: Outer = from_slice(br#"{"inner":{"a":1},"list":[{"a":2}]}"#).unwrap();
        assert_eq!(good, Outer { inner: Inner { a: 1 }, list: vec![Inner { a: 2 }] });
        for bad in [r#"[{"a":1},[]]"#, r#"{"inner":[1],"list":[]}"#, r#"{"inner":{"a":1},"list":[[2]]}"#] {
            let error = from_slice::<Outer>(bad.as_bytes()).unwrap_err().to_string();
            assert!(error.contains("invalid type: sequence, expected a JSON object"), "{bad}: {error}");
        }
        let error = from_slice::<Outer>(br#"{"inner":{"a":1,"b":2},"list":[]}"#).unwrap_err().to_string();
        assert!(error.contains("unknown field `b`"), "{error}");
        assert!(serde_json::from_slice::<Inner>(b"[1]").is_ok(), "the derive alone reads arrays: why this exists");
    }
}
