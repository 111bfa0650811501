//! The `[registry]` and `[onnxruntime]` config sections.

use std::path::PathBuf;

use adrank_featurestore::ConfigProblem;
use serde::{Deserialize, Serialize};

/// Where model versions are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A local folder (relative paths start at the directory adrank runs in), `file:///path`,
    /// or `s3://bucket/prefix` (credentials and region from the usual `AWS_*` variables).
    /// Every serving replica and trainer must point at the same location.
    pub location: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { location: ".adrank/registry".into() }
    }
}

/// A parsed registry location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on this machine.
    Local(PathBuf),
    /// An S3 bucket and a key prefix (possibly empty).
    S3 { bucket: String, prefix: String },
}

impl RegistryConfig {
    /// The location, parsed.
    pub fn parsed(&self) -> Result<Location, crate::Error> {
        let unsupported = || crate::Error::UnsupportedLocation(self.location.clone());
        let Some((scheme, rest)) = self.location.split_once("://") else {
            if self.location.trim().is_empty() {
                return Err(unsupported());
            }
            return Ok(Location::Local(PathBuf::from(&self.location)));
        };
        match scheme {
            "file" => {
                let url = url::Url::parse(&self.location).map_err(|_| unsupported())?;
                url.to_file_path().map(Location::Local).map_err(|()| unsupported())
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(unsupported());
                }
                Ok(Location::S3 { bucket: bucket.into(), prefix: prefix.trim_matches('/').into() })
            }
            _ => Err(unsupported()),
        }
    }

    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        match self.parsed() {
            Ok(_) => vec![],
            Err(e) => vec![ConfigProblem::new("location", e.to_string())],
        }
    }
}

/// How adrank finds and configures ONNX Runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OrtConfig {
    /// The `libonnxruntime.so` to load. Empty: `ORT_DYLIB_PATH`, then the copy the setup
    /// script installs under `.adrank/onnxruntime/`. Must be ONNX Runtime 1.31 or newer.
    pub library_path: String,
}

impl OrtConfig {
    /// Every problem in this section; empty when it is usable. (Whether the library loads is
    /// `doctor`'s question, not the config's: a config is valid on a machine still being set up.)
    pub fn problems(&self) -> Vec<ConfigProblem> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(s: &str) -> Result<Location, crate::Error> {
        RegistryConfig { location: s.into() }.parsed()
    }

    #[test]
    fn locations_parse() {
        assert_eq!(location(".adrank/registry").unwrap(), Location::Local(".adrank/registry".into()));
        assert_eq!(location("file:///var/models").unwrap(), Location::Local("/var/models".into()));
        assert_eq!(
            location("s3://bucket/a/b/").unwrap(),
            Location::S3 { bucket: "bucket".into(), prefix: "a/b".into() }
        );
        assert_eq!(location("s3://bucket").unwrap(), Location::S3 { bucket: "bucket".into(), prefix: "".into() });
    }

    #[test]
    fn bad_locations_are_refused() {
        for bad in ["", "gs://bucket", "s3://", "file://relative"] {
            assert!(location(bad).is_err(), "{bad} should be refused");
        }
    }
}
