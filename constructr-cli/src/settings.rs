//! Loading and validating the settings file (`--config`, `--cluster`): the node settings at
//! the top level, the backend options in `[etcd]` and `[consul]`.

use std::path::{Path, PathBuf};

use constructr::etcd::Secret;
use constructr::{ClusterName, Settings};
use serde::{Deserialize, Deserializer};

/// The `[etcd]` section: the same options as `--endpoints`, `--etcd-user`, ... (the
/// command line and the environment override each).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EtcdFile {
    /// etcd endpoints.
    pub endpoints: Option<Vec<String>>,
    /// etcd user.
    pub user: Option<String>,
    /// etcd password (better in CONSTRUCTR_ETCD_PASSWORD; never shown).
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<Secret>,
    /// CA certificate file.
    pub ca: Option<PathBuf>,
    /// Client certificate file.
    pub cert: Option<PathBuf>,
    /// Client key file.
    pub key: Option<PathBuf>,
}

/// The `[consul]` section: the same options as `--consul-address`, ...
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConsulFile {
    /// Consul HTTP API addresses.
    #[serde(alias = "addresses")]
    pub address: Option<Vec<String>>,
    /// ACL token (better in CONSTRUCTR_CONSUL_TOKEN; never shown).
    #[serde(default, deserialize_with = "secret")]
    pub token: Option<Secret>,
    /// Datacenter.
    pub datacenter: Option<String>,
    /// CA certificate file.
    pub ca: Option<PathBuf>,
    /// Client certificate file.
    pub cert: Option<PathBuf>,
    /// Client key file.
    pub key: Option<PathBuf>,
    /// Requests in flight at once (and so connections) per process; below the agent's
    /// `limits.http_max_conns_per_client`.
    pub max_connections: Option<usize>,
}

/// The backend sections of the settings file.
#[derive(Debug, Clone, Default)]
pub struct BackendFile {
    /// `[etcd]`.
    pub etcd: Option<EtcdFile>,
    /// `[consul]`.
    pub consul: Option<ConsulFile>,
}

/// A password or token: its error never shows the value (a mistyped secret is a secret).
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    match toml::Value::deserialize(d) {
        Ok(toml::Value::String(s)) => Ok(Some(Secret::from(s))),
        _ => Err(serde::de::Error::custom(
            "must be a string (its value is not shown)",
        )),
    }
}

/// A TOML error without the excerpt of the file that `toml` adds (the line may hold a
/// password): its message and where.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            format!("line {line}: {}", e.message().trim_end())
        }
        None => e.message().trim_end().to_owned(),
    }
}

/// Parses the whole file: the backend sections apart, the rest as it is.
fn parse(text: &str) -> Result<(toml::Table, BackendFile), String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let section = |table: &mut toml::Table, name: &str| table.remove(name);
    let etcd = match section(&mut table, "etcd") {
        Some(v) => Some(
            v.try_into::<EtcdFile>()
                .map_err(|e| format!("[etcd]: {}", e.message().trim_end()))?,
        ),
        None => None,
    };
    let consul = match section(&mut table, "consul") {
        Some(v) => Some(
            v.try_into::<ConsulFile>()
                .map_err(|e| format!("[consul]: {}", e.message().trim_end()))?,
        ),
        None => None,
    };
    Ok((table, BackendFile { etcd, consul }))
}

/// The backend sections of a settings file's text (the other keys are not checked).
#[cfg(test)]
pub fn parse_backend_file(text: &str) -> Result<BackendFile, String> {
    parse(text).map(|(_, file)| file)
}

/// Reads the TOML file over `base` (default: constructr's defaults), applies `--cluster`,
/// validates. Every error message names the file or the rule, and never holds a password
/// or token from the file.
pub fn load(
    path: Option<&Path>,
    cluster: Option<&str>,
    base: Option<Settings>,
) -> Result<(Settings, BackendFile), String> {
    let (mut settings, backends) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read settings file {}: {e}", path.display()))?;
            let invalid = |e: String| format!("invalid settings file {}: {e}", path.display());
            let (mut value, backends) = parse(&text).map_err(invalid)?;
            // Keys the file does not set come from the preset.
            if let Some(base) = base {
                let base = toml::Table::try_from(base).map_err(|e| e.to_string())?;
                for (k, v) in base {
                    value.entry(k).or_insert(v);
                }
            }
            let settings = toml::Value::Table(value)
                .try_into::<Settings>()
                .map_err(|e| invalid(e.message().trim_end().to_owned()))?;
            (settings, backends)
        }
        None => (base.unwrap_or_default(), BackendFile::default()),
    };
    if let Some(name) = cluster {
        settings.cluster_name = ClusterName::new(name).map_err(|e| e.to_string())?;
    }
    settings
        .validate()
        .map_err(|e| format!("invalid settings: {e}"))?;
    Ok((settings, backends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sections_parse_and_unknown_keys_are_errors() {
        let f = parse_backend_file(
            "[etcd]\nendpoints = [\"http://a:2379\"]\nuser = \"u\"\nca = \"/ca.pem\"\n\
             [consul]\naddress = [\"http://c:8500\"]\ntoken = \"t\"\ndatacenter = \"dc1\"\n",
        )
        .unwrap();
        let etcd = f.etcd.unwrap();
        assert_eq!(etcd.endpoints.unwrap(), ["http://a:2379"]);
        assert_eq!(etcd.ca.unwrap(), PathBuf::from("/ca.pem"));
        let consul = f.consul.unwrap();
        assert_eq!(consul.token.as_ref().map(Secret::expose), Some("t"));
        let e = parse_backend_file("[etcd]\nendpoint = [\"x\"]\n").unwrap_err();
        assert!(
            e.contains("[etcd]") && e.contains("unknown field `endpoint`"),
            "{e}"
        );
        let e = parse_backend_file("[consul]\nnope = 1\n").unwrap_err();
        assert!(e.contains("unknown field `nope`"), "{e}");
    }

    #[test]
    fn errors_never_show_a_secret_from_the_file() {
        for text in [
            "[etcd]\npassword = \"hunter2\nuser = \"u\"\n",
            "[etcd]\npassword = hunter2\n",
            "[etcd]\npassword = [\"hunter2\"]\n",
            "[consul]\ntoken = { hunter2 = 1 }\n",
            "[consul]\ntoken = \"hunter2\"\ntoken = \"hunter2\"\n",
            "[etcd]\npassword = \"hunter2\"\nbogus = \"x\"\n",
        ] {
            let e = parse_backend_file(text).unwrap_err();
            assert!(!e.contains("hunter2"), "{text}: {e}");
        }
    }

    fn toml_ish() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "endpoints",
            "user",
            "password",
            "ca",
            "cert",
            "key",
            "address",
            "addresses",
            "token",
            "datacenter",
            "bogus",
            "etcd",
            "consul",
            "",
        ]);
        let value = prop_oneof![
            Just("\"SECRET\"".to_owned()),
            Just("[\"http://a:2379\", \"SECRET\"]".to_owned()),
            Just("1".to_owned()),
            Just("true".to_owned()),
            Just("{ x = \"SECRET\" }".to_owned()),
            Just("\"unterminated SECRET".to_owned()),
            Just("SECRET".to_owned()),
            "[ -~]{0,12}",
        ];
        let line = prop_oneof![
            (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            Just("[etcd]".to_owned()),
            Just("[consul]".to_owned()),
            Just("[etcd.tls]".to_owned()),
            Just("[[consul]]".to_owned()),
            "[ -~]{0,20}",
        ];
        prop::collection::vec(line, 0..8).prop_map(|l| l.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn backend_sections_never_panic_and_errors_hide_secrets(text in toml_ish()) {
            match parse_backend_file(&text) {
                Ok(f) => {
                    // Debug of what was read hides the secrets as well.
                    let shown = format!("{f:?}");
                    let has_password = f.etcd.as_ref().is_some_and(|e| e.password.is_some());
                    let has_token = f.consul.as_ref().is_some_and(|c| c.token.is_some());
                    if has_password || has_token {
                        prop_assert!(shown.contains("<redacted>"), "{}", shown);
                    }
                }
                Err(e) => {
                    // A secret only appears in a password or token value: errors about
                    // other keys may quote those keys' values, so check just these.
                    if !text.lines().any(|l| {
                        let l = l.trim_start();
                        !(l.starts_with("password") || l.starts_with("token")) && l.contains("SECRET")
                    }) {
                        prop_assert!(!e.contains("SECRET"), "{}: {}", text, e);
                    }
                }
            }
        }
    }
}
