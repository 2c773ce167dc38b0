use std::fmt;

/// A secret read from a configuration file or a flag: `Debug` prints `***`, there is no
/// `PartialEq`, and [`SecretString::expose_secret`] is the one way to read it.
///
/// A value of the wrong type is refused without being echoed, since it may still be the secret.
///
/// ```
/// use tunnel_core::config::SecretString;
/// let secret = SecretString::from("correct horse battery staple".to_owned());
/// assert_eq!(format!("{secret:?}"), "***");
/// assert_eq!(secret.expose_secret(), "correct horse battery staple");
/// ```
///
/// Secrets are not compared with `==` (a comparison that stops at the first difference leaks
/// timing); this does not compile:
///
/// ```compile_fail,E0369
/// use tunnel_core::config::SecretString;
/// let secret = SecretString::from("correct horse battery staple".to_owned());
/// assert!(secret == secret.clone());
/// ```
#[derive(Clone, Default, serde::Serialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// The secret itself: pass it on, never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(SecretVisitor)
    }
}

/// Accepts a string; everything else is refused by kind only. serde's default messages quote
/// the value ("invalid type: integer `1234`"), which would print a mistyped token.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: serde::de::Error>(kind: &str) -> E {
        E::custom(format!("invalid type: {kind} (value not shown), expected a string"))
    }
}

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = SecretString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(SecretString(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(SecretString(v))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(Self::refuse("boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(Self::refuse("integer"))
    }

    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Self::Value, E> {
        Err(Self::refuse("integer"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(Self::refuse("integer"))
    }

    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Self::Value, E> {
        Err(Self::refuse("integer"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(Self::refuse("float"))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Err(Self::refuse("bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct File {
        token: SecretString,
    }

    #[test]
    fn a_mistyped_secret_is_refused_without_its_value() {
        for value in
            ["123456789012345678", "-123456789012345678", "1234.5678", "true", "[1234567]", "{ a = 1234567 }"]
        {
            let err = toml::from_str::<File>(&format!("token = {value}\n")).unwrap_err();
            let message = err.message();
            assert!(message.contains("expected a string"), "{value}: {message}");
            for digits in ["1234", "true"] {
                assert!(!message.contains(digits), "{value}: {message}");
            }
        }
    }

    #[test]
    fn debug_masks_and_serde_round_trips() {
        let file: File = toml::from_str("token = \"hunter2-hunter2-hunter2\"\n").unwrap();
        assert_eq!(file.token.expose_secret(), "hunter2-hunter2-hunter2");
        assert!(!format!("{file:?}").contains("hunter2"));
        assert_eq!(toml::to_string(&file).unwrap().trim(), "token = \"hunter2-hunter2-hunter2\"");
    }
}
