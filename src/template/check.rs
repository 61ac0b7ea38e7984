//! Reading a template's text: deep-merged over a base, every problem found
//! with its line, and the confinement of a template sent by a user.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{Problem, TemplateError};
use super::overrides::{Authority, Overrides};
use super::{DEFAULT_TOML, MAX_PROBLEMS, Template};

impl Template {
    /// Parses a template, deep-merged over the built-in default; the error names
    /// the file, the line and what is wrong (the first problem, with a count of
    /// the others: [`Template::check`] lists them all).
    pub fn parse(text: &str, name: &str) -> Result<Template, TemplateError> {
        Template::check(text, name)
    }

    /// Parses a template like [`Template::parse`]; the error holds every
    /// problem: syntax errors, unknown keys, bad values, in line order
    /// ([`TemplateError::lines`]).
    pub fn check(text: &str, name: &str) -> Result<Template, TemplateError> {
        Template::check_over(text, name, DEFAULT_TOML)
    }

    /// [`Template::check`] with `base` (TOML) in place of the built-in default.
    fn check_over(text: &str, name: &str, base: &str) -> Result<Template, TemplateError> {
        let invalid = |mut problems: Vec<Problem>| {
            problems.sort_by_key(|p| p.line);
            problems.dedup();
            TemplateError::Invalid {
                file: name.to_string(),
                problems,
            }
        };
        let (user, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            let problems = syntax
                .iter()
                .map(|e| Problem::at(text, e.span(), e.message().trim()))
                .collect();
            return Err(invalid(problems));
        }
        let mut user = user.into_inner();
        let mut problems = Vec::new();
        check_limits(text, &mut user, &mut problems);
        let base = DeTable::parse(base)
            .map_err(|e| TemplateError::Base(e.message().to_string()))?
            .into_inner();
        loop {
            let mut merged = base.clone();
            merge(&mut merged, user.clone());
            let de = toml::de::Deserializer::from(Spanned::new(0..text.len(), merged));
            match Template::deserialize(de) {
                Ok(t) => {
                    check_values(text, &t, &user, &mut problems);
                    return if problems.is_empty() {
                        Ok(t)
                    } else {
                        Err(invalid(problems))
                    };
                }
                Err(e) => {
                    problems.push(Problem::at(text, e.span(), e.message().trim()));
                    // Take the offending entry out (the default fills in) and
                    // read again, to report the next problem too.
                    let removed = e.span().is_some_and(|s| remove_at(&mut user, &s));
                    if !removed || problems.len() >= MAX_PROBLEMS {
                        return Err(invalid(problems));
                    }
                }
            }
        }
    }

    /// A template sent by a client that is not root, read over `base` (the
    /// operator's template the run would get without it). Such a template is data,
    /// not authority: it may set `[run]`, and make timeouts and graces
    /// shorter; it may not set `[alerts]` (commands and webhooks the
    /// root agent would run or call), `[cleanup]` or `[limits]`, nor lengthen or
    /// remove a timeout or grace, nor change the kill's freeze timeout or kill
    /// deadline (shorter ones make root's kill report a false `unkillable`). The
    /// error names the key and the operator's value.
    pub fn confine(text: &str, name: &str, base: &Template) -> Result<Template, TemplateError> {
        let base_text = toml::to_string(base).map_err(|e| TemplateError::Base(e.to_string()))?;
        let t = Template::check_over(text, name, &base_text).map_err(|e| match e {
            // Only the first problem: the rest may follow from it.
            TemplateError::Invalid { file, mut problems } => {
                problems.truncate(1);
                TemplateError::Invalid { file, problems }
            }
            other => other,
        })?;
        let operator_only = |section: &'static str, same: bool| {
            if same {
                Ok(())
            } else {
                Err(TemplateError::OperatorOnly {
                    file: name.to_string(),
                    section,
                })
            }
        };
        operator_only("alerts", t.alerts == base.alerts)?;
        operator_only("cleanup", t.cleanup == base.cleanup)?;
        operator_only("limits", t.limits == base.limits)?;
        operator_only("tmpdir", t.tmpdir == base.tmpdir)?;
        // A breaker is shared by everyone's runs of the workflow: a user's template
        // may not trip it sooner for others, nor turn it off.
        operator_only("breaker", t.breaker == base.breaker)?;
        // Every timeout and grace no longer than the operator's.
        base.with_overrides(&Overrides::all_of(&t), Authority::User)
            .map_err(|too_long| TemplateError::Longer {
                file: name.to_string(),
                too_long,
            })?;
        // How long root's kill waits for a freeze and for the tree to die before
        // it reports the run `unkillable`: shorter would make that report false
        // (and quarantine a killable run), longer would hold a kill up. Only the
        // operator's values (SECURITY.md, "Bounded values").
        operator_only(
            "kill.freeze_timeout",
            t.kill.freeze_timeout == base.kill.freeze_timeout,
        )?;
        operator_only(
            "kill.kill_deadline",
            t.kill.kill_deadline == base.kill.kill_deadline,
        )?;
        Ok(t)
    }
}

/// Deep merge: `over`'s entries replace `base`'s, tables merging key by key.
/// Replaced entries take `over`'s key too, so errors point into `over`'s text.
fn merge<'i>(base: &mut DeTable<'i>, over: DeTable<'i>) {
    for (key, value) in over {
        let existing = base.remove(key.get_ref().as_ref());
        let value = match (existing.map(Spanned::into_inner), value) {
            (Some(DeValue::Table(mut b)), v) if matches!(v.get_ref(), DeValue::Table(_)) => {
                let span = v.span();
                let DeValue::Table(o) = v.into_inner() else {
                    unreachable!("matched a table")
                };
                merge(&mut b, o);
                Spanned::new(span, DeValue::Table(b))
            }
            (_, v) => v,
        };
        base.insert(key, value);
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Removes the innermost entry of `table` whose key or value spans `span`
/// (a table's own span may cover only its header, so every table is searched).
fn remove_at(table: &mut DeTable<'_>, span: &Range<usize>) -> bool {
    let mut hit: Option<String> = None;
    for (key, value) in table.iter_mut() {
        if let DeValue::Table(inner) = value.get_mut()
            && remove_at(inner, span)
        {
            return true;
        }
        if hit.is_none() && (contains(&key.span(), span) || contains(&value.span(), span)) {
            hit = Some(key.get_ref().to_string());
        }
    }
    match hit {
        Some(key) => table.remove(key.as_str()).is_some(),
        None => false,
    }
}

/// The entry at `path` in the template's own text, if it sets it.
fn entry_at<'a, 'i>(table: &'a DeTable<'i>, path: &[&str]) -> Option<&'a Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let value = table.get(*first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value.get_ref() {
        DeValue::Table(inner) => entry_at(inner, rest),
        _ => None,
    }
}

/// Checks the `[limits]` the template's text sets, before they are read: each
/// must be a limit wfcg writes, with a value the kernel takes. Bad entries are
/// reported and taken out.
fn check_limits(text: &str, user: &mut DeTable<'_>, problems: &mut Vec<Problem>) {
    let Some(DeValue::Table(limits)) = user.get_mut("limits").map(Spanned::get_mut) else {
        return;
    };
    let mut bad = Vec::new();
    for (key, value) in limits.iter() {
        let name = key.get_ref().as_ref();
        let problem = match value.get_ref() {
            DeValue::Table(inner) => {
                let file = match inner.iter().next() {
                    Some((k, _)) => format!("{name}.{}", k.get_ref()),
                    None => name.to_string(),
                };
                Some((
                    key.span(),
                    format!(
                        "limits: {file} is read as a dotted key; quote the file name: \
                         \"{file}\" = \"...\""
                    ),
                ))
            }
            _ if crate::cgroup::limit_controller(name).is_none() => Some((
                key.span(),
                format!(
                    "unknown limit {name:?} (wfcg writes {})",
                    crate::cgroup::LIMIT_FILES.join(", ")
                ),
            )),
            DeValue::String(s) => crate::cgroup::check_limit(name, s)
                .err()
                .map(|e| (value.span(), format!("limits: {name}: {e}"))),
            DeValue::Integer(i) => crate::cgroup::check_limit(name, i.as_str())
                .err()
                .map(|e| (value.span(), format!("limits: {name}: {e}"))),
            other => Some((
                value.span(),
                format!(
                    "limits: {name}: expected a string like \"8G\", found {}",
                    other.type_str()
                ),
            )),
        };
        if let Some((span, message)) = problem {
            problems.push(Problem::at(text, Some(span), message));
            bad.push(name.to_string());
        }
    }
    for name in bad {
        limits.remove(name.as_str());
    }
}

/// Checks what types alone do not: the values make sense together and the
/// alert channels can be used.
fn check_values(text: &str, t: &Template, user: &DeTable<'_>, problems: &mut Vec<Problem>) {
    let span = |path: &[&str]| entry_at(user, path).map(Spanned::span);
    if let Some(url) = t.alerts.webhook.as_deref().filter(|u| !u.is_empty())
        && let Err(e) = crate::alerts::check_webhook(url)
    {
        problems.push(Problem::at(
            text,
            span(&["alerts", "webhook"]),
            format!("alerts.webhook: {e}"),
        ));
    }
    if !crate::tmpfs::valid_size(&t.tmpdir.size) {
        problems.push(Problem::at(
            text,
            span(&["tmpdir", "size"]),
            format!(
                "tmpdir.size: {:?} is not a size (bytes, with K, M, G or T, more than 0)",
                t.tmpdir.size
            ),
        ));
    }
    for (what, d) in [
        ("kill.freeze_timeout", t.kill.freeze_timeout),
        ("kill.kill_deadline", t.kill.kill_deadline),
    ] {
        if d.is_zero() {
            let path: Vec<&str> = what.split('.').collect();
            problems.push(Problem::at(
                text,
                span(&path),
                format!("{what} must be more than 0"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_template_may_not_change_the_kills_own_deadlines() {
        let base = Template::parse("", "base").unwrap();
        for (text, key) in [
            ("[kill]\nfreeze_timeout = \"1ms\"\n", "kill.freeze_timeout"),
            ("[kill]\nkill_deadline = \"100ms\"\n", "kill.kill_deadline"),
            ("[kill]\nkill_deadline = \"0\"\n", "kill.kill_deadline"),
            ("[kill]\nkill_deadline = \"1h\"\n", "kill.kill_deadline"),
        ] {
            let err = Template::confine(text, "u.toml", &base)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        // The operator's own values, repeated, are fine.
        let same = format!(
            "[kill]\nfreeze_timeout = \"{}\"\nkill_deadline = \"{}\"\n",
            crate::duration::format(base.kill.freeze_timeout),
            crate::duration::format(base.kill.kill_deadline)
        );
        assert!(Template::confine(&same, "u.toml", &base).is_ok());
    }
}
