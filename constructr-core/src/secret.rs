//! [`Secret`]: a password, token or key that never shows up in `Debug`, `Display` or
//! serialized output. Always available: settings and URL types of every crate hold secrets.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A password, token or key: `Debug` and `Display` print `<redacted>`, serde never writes
/// it out (there is no `Serialize`), and the text is reached only through [`Secret::expose`].
///
/// ```
/// use constructr_core::secret::Secret;
///
/// let s = Secret::from("hunter2");
/// assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// The secret text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}
