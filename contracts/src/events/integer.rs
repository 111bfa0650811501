//! Integers as JSON Schema means them: `1190.0` is an integer there (a number whose fraction is
//! zero), and JavaScript producers write one whenever a value went through a float. serde reads
//! integer fields from integer tokens only, so these fields read through [`int`] and [`opt`].

use std::{fmt, marker::PhantomData};

use serde::{Deserializer, de};

/// An integer type a JSON number may be read as.
pub trait Integer: Sized + TryFrom<i64> + TryFrom<u64> {
    const NAME: &'static str;
}

impl Integer for i64 {
    const NAME: &'static str = "an integer";
}

impl Integer for u64 {
    const NAME: &'static str = "a non-negative integer";
}

impl Integer for u32 {
    const NAME: &'static str = "a non-negative 32-bit integer";
}

impl Integer for u16 {
    const NAME: &'static str = "a non-negative 16-bit integer";
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: Integer> de::Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::NAME)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Within ±2^53 an f64 holds every integer exactly; beyond, `1e300` is not a count of
        // milliseconds anyone meant.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if v.fract() != 0.0 || !(-EXACT..=EXACT).contains(&v) {
            return Err(E::invalid_value(de::Unexpected::Float(v), &self));
        }
        self.visit_i64(v as i64)
    }
}

/// For `#[serde(deserialize_with)]` on an integer field.
pub fn int<'de, D: Deserializer<'de>, T: Integer>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_any(IntVisitor(PhantomData))
}

struct OptVisitor<T>(PhantomData<T>);

impl<'de, T: Integer> de::Visitor<'de> for OptVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} or null", T::NAME)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        int(deserializer).map(Some)
    }
}

/// For `#[serde(default, deserialize_with)]` on an optional integer field (`null`: absent).
pub fn opt<'de, D: Deserializer<'de>, T: Integer>(deserializer: D) -> Result<Option<T>, D::Error> {
    deserializer.deserialize_option(OptVisitor(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Fields {
        #[serde(deserialize_with = "super::int")]
        time: i64,
        #[serde(default, deserialize_with = "super::opt")]
        k: Option<u32>,
    }

    fn read(json: &str) -> Result<Fields, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        assert_eq!(read(r#"{"time": 1190.0, "k": 3.0}"#), Ok(Fields { time: 1190, k: Some(3) }));
        assert_eq!(read(r#"{"time": -5, "k": null}"#), Ok(Fields { time: -5, k: None }));
        assert_eq!(read(r#"{"time": 1e3}"#), Ok(Fields { time: 1000, k: None }));
        for (bad, why) in [
            (r#"{"time": 1.5}"#, "invalid value: floating point `1.5`, expected an integer"),
            (r#"{"time": 1e300}"#, "expected an integer"),
            (r#"{"time": "7"}"#, "invalid type: string \"7\", expected an integer"),
            (r#"{"time": 1, "k": -1}"#, "expected a non-negative 32-bit integer"),
            (r#"{"time": 1, "k": 4294967296}"#, "expected a non-negative 32-bit integer"),
        ] {
            let error = read(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
