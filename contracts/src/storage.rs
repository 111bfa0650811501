//! Object storage locations: a local folder, `file:///path` or `s3://bucket/prefix`, behind one
//! `object_store` API. The training log and the model registry both live in one.

use std::{path::PathBuf, sync::Arc};

use object_store::ObjectStore;

/// A parsed storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on this machine.
    Local(PathBuf),
    /// An S3 bucket and a key prefix (possibly empty).
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parses a location; `None` when it is empty or of an unsupported kind.
    pub fn parse(location: &str) -> Option<Self> {
        let Some((scheme, rest)) = location.split_once("://") else {
            return (!location.trim().is_empty()).then(|| Self::Local(PathBuf::from(location)));
        };
        match scheme {
            "file" => url::Url::parse(location).ok()?.to_file_path().ok().map(Self::Local),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                (!bucket.is_empty())
                    .then(|| Self::S3 { bucket: bucket.into(), prefix: prefix.trim_matches('/').into() })
            }
            _ => None,
        }
    }

    /// Opens the location; a local folder is created when missing. S3 credentials and region
    /// come from the usual `AWS_*` variables.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        match self {
            Self::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
                Ok(Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?))
            }
            Self::S3 { bucket, prefix } => {
                let store = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
                if prefix.is_empty() {
                    Ok(Arc::new(store))
                } else {
                    Ok(Arc::new(object_store::prefix::PrefixStore::new(store, prefix.as_str())))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(Location::parse(".adrank/registry"), Some(Location::Local(".adrank/registry".into())));
        assert_eq!(Location::parse("file:///var/models"), Some(Location::Local("/var/models".into())));
        assert_eq!(
            Location::parse("s3://bucket/a/b/"),
            Some(Location::S3 { bucket: "bucket".into(), prefix: "a/b".into() })
        );
        assert_eq!(Location::parse("s3://bucket"), Some(Location::S3 { bucket: "bucket".into(), prefix: "".into() }));
    }

    #[test]
    fn bad_locations_are_refused() {
        for bad in ["", " ", "gs://bucket", "s3://", "file://relative"] {
            assert_eq!(Location::parse(bad), None, "{bad} should be refused");
        }
    }
}
