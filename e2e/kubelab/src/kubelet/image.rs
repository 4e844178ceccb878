//! Image references → local binaries (`--image PATTERN=BINARY`).
//!
//! A pattern is either an exact image reference or a prefix ending in `*`. An exact match wins;
//! otherwise the longest matching prefix does, so `repo/agent:*` can be overridden for one tag.

use std::path::{Path, PathBuf};

use super::error::{KubeletError, Result};

/// One `--image` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRule {
    pattern: String,
    binary: PathBuf,
}

impl ImageRule {
    /// Parses `PATTERN=BINARY`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| KubeletError::Flag {
            flag: "--image",
            value: s.to_owned(),
            reason,
        };
        let (pattern, binary) = s.split_once('=').ok_or(bad("expected PATTERN=BINARY"))?;
        if pattern.is_empty() || binary.is_empty() {
            return Err(bad("pattern and binary must not be empty"));
        }
        if pattern.trim_end_matches('*').contains('*') {
            return Err(bad("`*` is only allowed at the end of the pattern"));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            binary: PathBuf::from(binary),
        })
    }

    /// How well this rule matches `image`: `None` for no match, higher is more specific.
    fn score(&self, image: &str) -> Option<usize> {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix).then_some(prefix.len()),
            None => (image == self.pattern).then_some(usize::MAX),
        }
    }
}

/// All `--image` rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageMap {
    rules: Vec<ImageRule>,
}

impl ImageMap {
    /// A map from rules (later rules win ties).
    pub fn new(rules: Vec<ImageRule>) -> Self {
        Self { rules }
    }

    /// The binary for `image`, or [`KubeletError::ImageNotMapped`].
    pub fn resolve(&self, image: &str) -> Result<&Path> {
        self.rules
            .iter()
            .filter_map(|r| r.score(image).map(|s| (s, r)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, r)| r.binary.as_path())
            .ok_or_else(|| KubeletError::ImageNotMapped {
                image: image.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> ImageMap {
        ImageMap::new(rules.iter().map(|r| ImageRule::parse(r).unwrap()).collect())
    }

    #[test]
    fn resolves_exact_and_prefix_rules() {
        let m = map(&[
            "ghcr.io/wirekube/wirekube-agent:*=/bin/agent",
            "ghcr.io/wirekube/*=/bin/any",
            "ghcr.io/wirekube/wirekube-agent:dev=/bin/dev-agent",
            "busybox=/bin/sleep",
        ]);
        let cases = [
            ("ghcr.io/wirekube/wirekube-agent:v0.1.0", Some("/bin/agent")),
            (
                "ghcr.io/wirekube/wirekube-agent:dev",
                Some("/bin/dev-agent"),
            ),
            ("ghcr.io/wirekube/wirekube-relay:v1", Some("/bin/any")),
            ("busybox", Some("/bin/sleep")),
            ("busybox:1.36", None),
            ("docker.io/library/nginx", None),
        ];
        for (image, want) in cases {
            let got = m
                .resolve(image)
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
            assert_eq!(got.as_deref(), want, "{image}");
        }
    }

    #[test]
    fn unmapped_image_names_the_image() {
        let err = map(&[]).resolve("nginx:1").unwrap_err();
        assert!(err.to_string().contains("\"nginx:1\""), "{err}");
        assert_eq!(err.reason(), "ErrImagePull");
    }

    #[test]
    fn rejects_malformed_rules() {
        for bad in ["", "nginx", "=/bin/x", "nginx=", "a*b=/bin/x"] {
            assert!(ImageRule::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ImageRule::parse("*=/bin/fallback").is_ok());
    }
}
