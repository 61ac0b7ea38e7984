//! A request's durations over a template's: the one place of the rule "a user
//! may shorten the operator's timeouts and graces, never lengthen or remove
//! them; the operator (root, or `kill_any` for a kill's graces) may".
//!
//! Three kinds of request go through it: a start's flags (`wfcg run --timeout`,
//! `--stall-timeout`, ...: refused when longer), a kill's graces (`wfcg kill
//! --grace`, ...: capped when longer, since a kill is never refused for asking
//! a longer grace) and a user's template text ([`Template::confine`]: refused).
//! Each asks [`Template::with_overrides`] or [`Template::with_overrides_capped`];
//! both go through one comparison, [`no_longer`], over one table, [`Key`].

use std::time::Duration;

use super::Template;
use super::error::TooLong;

/// One duration of a template that a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `timeouts.init` (`--init-timeout`).
    Init,
    /// `timeouts.total` (`--timeout`).
    Total,
    /// `timeouts.watchdog` (`--watchdog`).
    Watchdog,
    /// `timeouts.stall` (`--stall-timeout`).
    Stall,
    /// `timeouts.output` (`--output-timeout`).
    Output,
    /// `kill.term_grace` (a kill's `grace_ms`).
    TermGrace,
    /// `kill.freeze_timeout` (a template's only).
    FreezeTimeout,
    /// `kill.kill_deadline` (a template's only).
    KillDeadline,
    /// `critical_sections.git` (a kill's `grace_git_ms`).
    Git,
    /// `critical_sections.database` (a kill's `grace_db_ms`).
    Database,
    /// `critical_sections.files` (a kill's `grace_files_ms`).
    Files,
    /// `critical_sections.max_wait` (a kill's `max_wait_ms`).
    MaxWait,
}

impl Key {
    /// Every key, in the order a whole template is compared.
    pub const ALL: [Key; 12] = [
        Key::Init,
        Key::Total,
        Key::Watchdog,
        Key::Stall,
        Key::Output,
        Key::TermGrace,
        Key::FreezeTimeout,
        Key::KillDeadline,
        Key::Git,
        Key::Database,
        Key::Files,
        Key::MaxWait,
    ];

    /// The key in a template's text (`timeouts.init`).
    pub fn template_key(self) -> &'static str {
        match self {
            Key::Init => "timeouts.init",
            Key::Total => "timeouts.total",
            Key::Watchdog => "timeouts.watchdog",
            Key::Stall => "timeouts.stall",
            Key::Output => "timeouts.output",
            Key::TermGrace => "kill.term_grace",
            Key::FreezeTimeout => "kill.freeze_timeout",
            Key::KillDeadline => "kill.kill_deadline",
            Key::Git => "critical_sections.git",
            Key::Database => "critical_sections.database",
            Key::Files => "critical_sections.files",
            Key::MaxWait => "critical_sections.max_wait",
        }
    }

    /// The value in words, as a request's error names it (`init timeout`).
    pub fn words(self) -> &'static str {
        match self {
            Key::Init => "init timeout",
            Key::Total => "timeout",
            Key::Watchdog => "watchdog",
            Key::Stall => "stall timeout",
            Key::Output => "output timeout",
            Key::TermGrace => "grace",
            Key::FreezeTimeout => "freeze timeout",
            Key::KillDeadline => "kill deadline",
            Key::Git => "git grace",
            Key::Database => "database grace",
            Key::Files => "files grace",
            Key::MaxWait => "max wait",
        }
    }

    /// Whether 0 means "off" (a timeout: no limit, the longest value there is)
    /// rather than "none" (a grace: the shortest).
    pub fn zero_is_off(self) -> bool {
        matches!(
            self,
            Key::Init | Key::Total | Key::Watchdog | Key::Stall | Key::Output
        )
    }

    /// The template's value.
    pub fn of(self, t: &Template) -> Duration {
        let (timeouts, kill, cs) = (&t.timeouts, &t.kill, &t.critical_sections);
        match self {
            Key::Init => timeouts.init,
            Key::Total => timeouts.total,
            Key::Watchdog => timeouts.watchdog,
            Key::Stall => timeouts.stall,
            Key::Output => timeouts.output,
            Key::TermGrace => kill.term_grace,
            Key::FreezeTimeout => kill.freeze_timeout,
            Key::KillDeadline => kill.kill_deadline,
            Key::Git => cs.git,
            Key::Database => cs.database,
            Key::Files => cs.files,
            Key::MaxWait => cs.max_wait,
        }
    }

    fn slot(self, t: &mut Template) -> &mut Duration {
        let (timeouts, kill, cs) = (&mut t.timeouts, &mut t.kill, &mut t.critical_sections);
        match self {
            Key::Init => &mut timeouts.init,
            Key::Total => &mut timeouts.total,
            Key::Watchdog => &mut timeouts.watchdog,
            Key::Stall => &mut timeouts.stall,
            Key::Output => &mut timeouts.output,
            Key::TermGrace => &mut kill.term_grace,
            Key::FreezeTimeout => &mut kill.freeze_timeout,
            Key::KillDeadline => &mut kill.kill_deadline,
            Key::Git => &mut cs.git,
            Key::Database => &mut cs.database,
            Key::Files => &mut cs.files,
            Key::MaxWait => &mut cs.max_wait,
        }
    }
}

/// Who asks for the values: whether a longer one (or 0 for a timeout, "off")
/// may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Root (for a kill's graces, also a holder of `kill_any`): any value.
    Operator,
    /// Anyone else: no value longer than the template's.
    User,
}

impl Authority {
    /// The operator when `operator` holds, else a user.
    pub fn operator_if(operator: bool) -> Authority {
        if operator {
            Authority::Operator
        } else {
            Authority::User
        }
    }
}

/// How a request's errors name a value: by its words (a start's flags) or by
/// its key in a template's text (a user's template).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Naming {
    #[default]
    Words,
    TemplateKey,
}

/// The durations a request asks for in place of a template's, in the order
/// they are compared (a refusal names the first too long).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    asked: Vec<(Key, Duration)>,
    naming: Naming,
}

impl Overrides {
    /// Nothing asked yet; errors name the values in words (`stall timeout`).
    pub fn new() -> Overrides {
        Overrides::default()
    }

    /// Every duration of `t`, named by its template key (`timeouts.stall`): a
    /// whole template asked for over another.
    pub fn all_of(t: &Template) -> Overrides {
        Overrides {
            asked: Key::ALL.iter().map(|&k| (k, k.of(t))).collect(),
            naming: Naming::TemplateKey,
        }
    }

    /// `key` asked as `value`, if it is asked.
    pub fn with(mut self, key: Key, value: Option<Duration>) -> Overrides {
        if let Some(v) = value {
            self.asked.push((key, v));
        }
        self
    }

    /// `key` asked as `ms` milliseconds, if it is asked (the wire's form).
    pub fn with_ms(self, key: Key, ms: Option<u64>) -> Overrides {
        self.with(key, ms.map(Duration::from_millis))
    }

    fn name(&self, key: Key) -> &'static str {
        match self.naming {
            Naming::Words => key.words(),
            Naming::TemplateKey => key.template_key(),
        }
    }
}

impl Template {
    /// This template with the durations `request` asks for, as `who` may ask
    /// them: for a user, each no longer than this template's (0, "off", is the
    /// longest timeout of all); the error names the first that is, with both
    /// values. The operator may set any.
    pub fn with_overrides(&self, request: &Overrides, who: Authority) -> Result<Template, TooLong> {
        let mut t = self.clone();
        for &(key, value) in &request.asked {
            *key.slot(&mut t) = self.allowed(request, key, value, who)?;
        }
        Ok(t)
    }

    /// [`Template::with_overrides`], where a value longer than a user may ask
    /// is cut to this template's instead of refused (a kill's graces: a kill is
    /// never refused for asking a longer grace).
    pub fn with_overrides_capped(&self, request: &Overrides, who: Authority) -> Template {
        let mut t = self.clone();
        for &(key, value) in &request.asked {
            *key.slot(&mut t) = self
                .allowed(request, key, value, who)
                .unwrap_or_else(|too_long| too_long.limit);
        }
        t
    }

    /// `value` for `key` if `who` may ask it over this template's.
    fn allowed(
        &self,
        request: &Overrides,
        key: Key,
        value: Duration,
        who: Authority,
    ) -> Result<Duration, TooLong> {
        if who == Authority::User {
            no_longer(request.name(key), value, key.of(self), key.zero_is_off())?;
        }
        Ok(value)
    }
}

/// Checks that `value` for `key` is no longer than the operator's `limit`: what a
/// user may ask for themselves. With `zero_is_off` (timeouts), 0 means no limit at
/// all, so it is the longest value there is.
fn no_longer(
    key: &str,
    value: Duration,
    limit: Duration,
    zero_is_off: bool,
) -> Result<(), TooLong> {
    let off = |d: Duration| zero_is_off && d.is_zero();
    if off(limit) || (!off(value) && value <= limit) {
        return Ok(());
    }
    Err(TooLong {
        key: key.to_string(),
        value,
        limit,
        zero_is_off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        let mut t = Template::builtin().unwrap();
        t.timeouts.total = Duration::from_secs(3600);
        t.timeouts.watchdog = Duration::ZERO;
        t.kill.term_grace = Duration::from_secs(5);
        t.critical_sections.git = Duration::from_secs(30);
        t
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_shorter_value_is_taken_from_a_user() {
        let asked = Overrides::new()
            .with(Key::Total, Some(S(60)))
            .with_ms(Key::TermGrace, Some(1500))
            .with(Key::Git, None);
        for t in [
            template().with_overrides(&asked, Authority::User).unwrap(),
            template().with_overrides_capped(&asked, Authority::User),
        ] {
            assert_eq!(t.timeouts.total, S(60));
            assert_eq!(t.kill.term_grace, Duration::from_millis(1500));
            // Not asked: the template's.
            assert_eq!(t.critical_sections.git, S(30));
        }
        // A grace of 0 is the shortest there is.
        let none = Overrides::new().with(Key::TermGrace, Some(Duration::ZERO));
        let t = template().with_overrides(&none, Authority::User).unwrap();
        assert_eq!(t.kill.term_grace, Duration::ZERO);
    }

    #[test]
    fn a_longer_value_from_a_user_is_refused_naming_the_key_and_both_values() {
        let asked = Overrides::new()
            .with(Key::Stall, Some(S(5)))
            .with(Key::Total, Some(S(7200)));
        let err = template()
            .with_overrides(&asked, Authority::User)
            .unwrap_err();
        assert_eq!(err.key, "timeout");
        assert_eq!((err.value, err.limit), (S(7200), S(3600)));
        assert_eq!(
            err.to_string(),
            "timeout = 2h is longer than the operator's 1h (only root may lengthen or remove it)"
        );
        // A whole template asked over another is named by its keys.
        let mut longer = template();
        longer.kill.term_grace = S(60);
        let err = template()
            .with_overrides(&Overrides::all_of(&longer), Authority::User)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kill.term_grace = 1m is longer than the operator's 5s (only root may lengthen or \
             remove it)"
        );
    }

    #[test]
    fn a_longer_value_is_capped_under_cap() {
        let asked = Overrides::new()
            .with(Key::TermGrace, Some(S(600)))
            .with(Key::Git, Some(S(10)))
            .with(Key::Total, Some(Duration::ZERO));
        let t = template().with_overrides_capped(&asked, Authority::User);
        assert_eq!(t.kill.term_grace, S(5));
        assert_eq!(t.critical_sections.git, S(10));
        // A timeout removed: the operator's.
        assert_eq!(t.timeouts.total, S(3600));
        // The operator's request is taken as it is.
        let t = template().with_overrides_capped(&asked, Authority::Operator);
        assert_eq!(t.kill.term_grace, S(600));
        assert_eq!(t.timeouts.total, Duration::ZERO);
    }

    #[test]
    fn removing_a_timeout_is_refused_for_a_user_and_allowed_for_root() {
        let off = Overrides::new().with_ms(Key::Total, Some(0));
        let err = template()
            .with_overrides(&off, Authority::User)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "timeout = 0 (off) is longer than the operator's 1h (only root may lengthen or \
             remove it)"
        );
        let t = template()
            .with_overrides(&off, Authority::Operator)
            .unwrap();
        assert_eq!(t.timeouts.total, Duration::ZERO);
        // Longer too, for root.
        let long = Overrides::new().with(Key::Total, Some(S(7200)));
        let t = template()
            .with_overrides(&long, Authority::Operator)
            .unwrap();
        assert_eq!(t.timeouts.total, S(7200));
        // Where the operator set none (0, off), a user may set one of any length.
        let watchdog = Overrides::new().with(Key::Watchdog, Some(S(86_400)));
        let t = template()
            .with_overrides(&watchdog, Authority::User)
            .unwrap();
        assert_eq!(t.timeouts.watchdog, S(86_400));
    }

    #[test]
    fn every_key_reads_and_writes_its_own_value() {
        let base = template();
        for (i, &key) in Key::ALL.iter().enumerate() {
            let v = Duration::from_millis(1 + i as u64);
            let t = base
                .with_overrides(&Overrides::new().with(key, Some(v)), Authority::Operator)
                .unwrap();
            assert_eq!(key.of(&t), v, "{key:?}");
            for &other in Key::ALL.iter().filter(|&&k| k != key) {
                assert_eq!(other.of(&t), other.of(&base), "{key:?} changed {other:?}");
            }
        }
    }
}
