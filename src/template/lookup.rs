//! Finding a template by name: the operator's directory, then the shipped ones.

use std::path::{Path, PathBuf};

use super::{BUILTIN, BUILTIN_SOURCE, DEFAULT_TOML, SYSTEM_DIR, Template, TemplateError};

impl Template {
    /// The template `name`: `/etc/wfcg/templates/NAME.toml` if present, else the
    /// shipped one. An unknown name is an error listing the known ones.
    pub fn lookup(name: &str) -> Result<Template, TemplateError> {
        Template::lookup_in(Path::new(SYSTEM_DIR), name)
    }

    /// [`Template::lookup`] with another directory in place of `/etc/wfcg/templates`.
    pub fn lookup_in(dir: &Path, name: &str) -> Result<Template, TemplateError> {
        check_name(name)?;
        let path = dir.join(format!("{name}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Template::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match builtin_text(name) {
                Some(text) => Template::parse(text, &builtin_file(name)),
                None => Err(TemplateError::NotFound {
                    name: name.to_string(),
                    known: Template::list_in(dir).into_iter().map(|(n, _)| n).collect(),
                    path,
                }),
            },
            Err(e) => Err(TemplateError::Unreadable {
                path,
                error: e.to_string(),
            }),
        }
    }

    /// The template `name` if there is one: `Ok(None)` when no file and no
    /// shipped template has that name (or it is no plain name, e.g. a workflow
    /// label with a '/'), an error when it exists but is broken or unreadable.
    /// For `--workflow NAME`, whose template is optional.
    pub fn find(name: &str) -> Result<Option<Template>, TemplateError> {
        Template::find_in(Path::new(SYSTEM_DIR), name)
    }

    /// [`Template::find`] with another directory in place of `/etc/wfcg/templates`.
    pub fn find_in(dir: &Path, name: &str) -> Result<Option<Template>, TemplateError> {
        if check_name(name).is_err()
            || (builtin_text(name).is_none() && !dir.join(format!("{name}.toml")).exists())
        {
            return Ok(None);
        }
        Template::lookup_in(dir, name).map(Some)
    }

    /// The templates there are, as (name, where from): the shipped ones first
    /// (`built-in`, or the file in `/etc/wfcg/templates` that replaces one), then
    /// the other files of `/etc/wfcg/templates`, by name.
    pub fn list() -> Vec<(String, String)> {
        Template::list_in(Path::new(SYSTEM_DIR))
    }

    /// [`Template::list`] with another directory in place of `/etc/wfcg/templates`.
    pub fn list_in(dir: &Path) -> Vec<(String, String)> {
        let file = |name: &str| dir.join(format!("{name}.toml"));
        let mut out: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(name, _)| {
                let source = if file(name).exists() {
                    file(name).display().to_string()
                } else {
                    BUILTIN_SOURCE.to_string()
                };
                (name.to_string(), source)
            })
            .collect();
        let mut extra: Vec<(String, String)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let path: PathBuf = entry.path();
                let stem = path.file_name()?.to_str()?.strip_suffix(".toml")?;
                (check_name(stem).is_ok() && builtin_text(stem).is_none())
                    .then(|| (stem.to_string(), path.display().to_string()))
            })
            .collect();
        extra.sort();
        out.extend(extra);
        out
    }

    /// The default template: `/etc/wfcg/templates/default.toml` if present, else the built-in one.
    pub fn default_for_host() -> Result<Template, TemplateError> {
        Template::lookup("default")
    }

    /// The shipped `default.toml`.
    pub fn builtin() -> Result<Template, TemplateError> {
        Template::parse(DEFAULT_TOML, &builtin_file("default"))
    }
}

/// The text of a shipped template.
pub fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// How errors name a shipped template.
fn builtin_file(name: &str) -> String {
    format!("cgroup-templates/{name}.toml")
}

/// A template name must be a plain file stem: no path, no `..`.
pub fn check_name(name: &str) -> Result<(), TemplateError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("..");
    if plain {
        Ok(())
    } else {
        Err(TemplateError::BadName(name.to_string()))
    }
}
