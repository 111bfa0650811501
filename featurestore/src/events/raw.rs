//! Raw feature values: what serving saw, exactly, before any transform.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// One raw value: a string, a number, or explicitly missing (`null`).
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// A categorical value.
    Str(String),
    /// A numeric value. JSON cannot carry NaN or infinities, but values computed in-process can
    /// be non-finite; the transforms treat those as missing.
    Num(f64),
    /// Known to be missing.
    Missing,
}

impl From<&str> for RawValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}

impl From<String> for RawValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<f64> for RawValue {
    fn from(x: f64) -> Self {
        Self::Num(x)
    }
}

/// Raw features by name. Ordered, so that encoding is deterministic byte for byte. Names are
/// `Cow` so that producers with fixed names (serving, the world) build records without
/// allocating a string per name; decoded records own theirs.
pub type RawFeatures = BTreeMap<Cow<'static, str>, RawValue>;

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

struct RawValueVisitor;

impl de::Visitor<'_> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a number or null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::Str(v))
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
