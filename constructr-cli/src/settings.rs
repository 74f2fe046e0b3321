//! Loading and validating settings from `--config` and `--cluster`.

use std::path::Path;

use constructr::{ClusterName, Settings};

/// Reads the TOML file over `base` (default: constructr's defaults), applies `--cluster`,
/// validates. Every error message names the file or the rule.
pub fn load(
    path: Option<&Path>,
    cluster: Option<&str>,
    base: Option<Settings>,
) -> Result<Settings, String> {
    let mut settings = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read settings file {}: {e}", path.display()))?;
            let mut value: toml::Table = toml::from_str(&text)
                .map_err(|e| format!("invalid settings file {}: {e}", path.display()))?;
            // Keys the file does not set come from the preset.
            if let Some(base) = base {
                let base = toml::Table::try_from(base).map_err(|e| e.to_string())?;
                for (k, v) in base {
                    value.entry(k).or_insert(v);
                }
            }
            toml::Value::Table(value)
                .try_into::<Settings>()
                .map_err(|e| format!("invalid settings file {}: {e}", path.display()))?
        }
        None => base.unwrap_or_default(),
    };
    if let Some(name) = cluster {
        settings.cluster_name = ClusterName::new(name).map_err(|e| e.to_string())?;
    }
    settings
        .validate()
        .map_err(|e| format!("invalid settings: {e}"))?;
    Ok(settings)
}
